"""One file per model; each is a config dataclass plus an nn.Module built from qkv.nn."""
from .baselines import LSTMSeq2Seq, LSTMSeq2SeqConfig
from .bert import BERT, BERTConfig
from .gpt import GPT, GPTConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

# model_type (as written in config.json) -> model class; the class names its config class.
MODELS = {GPT.model_type: GPT, BERT.model_type: BERT, Transformer.model_type: Transformer,
          ViT.model_type: ViT, LSTMSeq2Seq.model_type: LSTMSeq2Seq}

__all__ = ["BERT", "BERTConfig", "GPT", "GPTConfig", "LSTMSeq2Seq", "LSTMSeq2SeqConfig", "MODELS",
           "Transformer", "TransformerConfig", "ViT", "ViTConfig"]
