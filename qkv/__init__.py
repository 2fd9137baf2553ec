"""qkv: the Transformer family in one small, fast, readable PyTorch codebase."""
from .interop import from_hf, save_hf
from .io import load, save_model
from .models import (BERT, BERTConfig, DETR, DETRConfig, DeformableDETR, DeformableDETRConfig, GPT, GPTConfig, ImageGPT, ImageGPTConfig, ResNet, ResNetConfig, Swin, SwinConfig, Transformer,
                     TransformerConfig, ViT, ViTConfig)

__version__ = "0.1.0"
__all__ = ["BERT", "BERTConfig", "DETR", "DETRConfig", "DeformableDETR", "DeformableDETRConfig", "GPT", "GPTConfig", "ImageGPT", "ImageGPTConfig", "ResNet", "ResNetConfig", "Swin", "SwinConfig", "Transformer", "TransformerConfig", "ViT",
           "ViTConfig", "from_hf", "load", "save_hf", "save_model"]
