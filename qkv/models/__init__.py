"""One file per model; each is a config dataclass plus an nn.Module built from qkv.nn."""
from .bert import BERT, BERTConfig
from .gpt import GPT, GPTConfig

# model_type (as written in config.json) -> model class; the class names its config class.
MODELS = {GPT.model_type: GPT, BERT.model_type: BERT}

__all__ = ["BERT", "BERTConfig", "GPT", "GPTConfig", "MODELS"]
