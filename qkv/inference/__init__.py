"""Using a trained model: generate text, translate, embed sentences, fill masks, classify
images. Each reads a model (``qkv.load``) and never reaches back into training code."""
from .classify import classify, load_image
from .embed import embed, search
from .fill_mask import fill_mask
from .generate import generate, sample_next, stream
from .translate import beam_search, check_seq2seq, translate, translate_texts

__all__ = ["beam_search", "check_seq2seq", "classify", "embed", "fill_mask", "generate", "load_image",
           "sample_next", "search", "stream", "translate", "translate_texts"]
