"""Seeing what attention does: attention maps of every model (``qkv.nn.capture``),
attention rollout, position-embedding similarity, mean attention distance and CKA, and the
pictures ``qkv analyze`` draws of them."""
from ..nn import Captured, capture, layer_names
from .look import Maps, hidden_states, image_maps, text_maps, translation_maps
from .measures import (MinibatchCKA, attention_rollout, cka, cls_rollout_map, fuse_heads, mean_attention_distance,
                       patch_distances, position_similarity, unbiased_hsic)

__all__ = ["Captured", "Maps", "MinibatchCKA", "attention_rollout", "capture", "cka", "cls_rollout_map", "fuse_heads",
           "hidden_states", "image_maps", "layer_names", "mean_attention_distance", "patch_distances",
           "position_similarity", "text_maps", "translation_maps", "unbiased_hsic"]
