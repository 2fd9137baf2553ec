"""The parts every qkv model shares. Attention is written here and nowhere else."""
from .attention import KVCache, MultiHeadAttention, scaled_dot_product_attention
from .blocks import ACTIVATIONS, Block, FeedForward
from .capture import Captured, capture, layer_names
from .masks import causal_mask, combine, padding_mask
from .position import SinusoidalPositions, interpolate_grid, sinusoidal_table

__all__ = [
    "ACTIVATIONS", "Block", "Captured", "FeedForward", "KVCache", "MultiHeadAttention", "SinusoidalPositions",
    "capture", "causal_mask", "combine", "interpolate_grid", "layer_names", "padding_mask", "scaled_dot_product_attention", "sinusoidal_table",
]
