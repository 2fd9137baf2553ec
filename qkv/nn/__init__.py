"""The parts every qkv model shares. Attention is written here and nowhere else."""
from .attention import KVCache, MultiHeadAttention, scaled_dot_product_attention
from .blocks import ACTIVATIONS, Block, FeedForward
from .capture import Captured, capture, hidden_layer, layer_names
from .deformable import (DeformableDecoderLayer, DeformableEncoderLayer, MultiScaleDeformableAttention, Sampling,
                         capture_sampling, multi_scale_deformable_attention)
from .masks import causal_mask, combine, padding_mask
from .position import SinusoidalPositions, box_positions, interpolate_grid, sine_positions_2d, sinusoidal_table
from .windows import partition, relative_position_index, shifted_window_mask, unpartition

__all__ = [
    "ACTIVATIONS", "Block", "Captured", "FeedForward", "KVCache", "MultiHeadAttention", "SinusoidalPositions",
    "box_positions", "capture", "causal_mask", "combine", "hidden_layer", "interpolate_grid", "layer_names",
    "padding_mask", "partition", "relative_position_index", "scaled_dot_product_attention", "shifted_window_mask",
    "sine_positions_2d", "sinusoidal_table", "unpartition",
    "DeformableDecoderLayer", "DeformableEncoderLayer", "MultiScaleDeformableAttention", "Sampling", "capture_sampling",
    "multi_scale_deformable_attention",
]
