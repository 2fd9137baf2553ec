"""One file per model; each is a config dataclass plus an nn.Module built from qkv.nn."""
from .gpt import GPT, GPTConfig

# model_type (as written in config.json) -> model class; the class names its config class.
MODELS = {GPT.model_type: GPT}

__all__ = ["GPT", "GPTConfig", "MODELS"]
