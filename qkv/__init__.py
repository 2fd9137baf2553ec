"""qkv: the Transformer family in one small, fast, readable PyTorch codebase."""
from .io import load, save_model
from .models import GPT, GPTConfig

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "load", "save_model"]
