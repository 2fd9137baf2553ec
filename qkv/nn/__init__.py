"""The parts every qkv model shares. Attention is written here and nowhere else."""
from .attention import KVCache, MultiHeadAttention, scaled_dot_product_attention
from .blocks import ACTIVATIONS, Block, FeedForward
from .masks import causal_mask, combine, padding_mask
from .position import SinusoidalPositions, interpolate_grid, sinusoidal_table

__all__ = [
    "ACTIVATIONS", "Block", "FeedForward", "KVCache", "MultiHeadAttention", "SinusoidalPositions",
    "causal_mask", "combine", "interpolate_grid", "padding_mask", "scaled_dot_product_attention", "sinusoidal_table",
]
