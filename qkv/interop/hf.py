"""Reading and writing Hugging Face model directories (config.json + weights)."""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from ..files import atomic_write, atomic_write_text, read_json
from ..errors import CheckpointError, ConfigError

SAFETENSORS, SHARD_INDEX, PICKLE = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"

# Keys every transformers config may carry (PretrainedConfig's own, and generation
# defaults older versions wrote into config.json): bookkeeping, labels and generation
# settings, none of which changes a model's forward computation.
GENERIC_CONFIG_KEYS = frozenset("""
    _name_or_path _commit_hash _attn_implementation_autoset transformers_version model_type
    architectures dtype torch_dtype use_bfloat16 torchscript tf_legacy_loss return_dict
    output_hidden_states output_attentions use_cache pruned_heads chunk_size_feed_forward
    is_encoder_decoder is_decoder tie_encoder_decoder finetuning_task id2label label2id
    problem_type tokenizer_class prefix task_specific_params initializer_range
    bos_token_id pad_token_id eos_token_id sep_token_id decoder_start_token_id
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    gradient_checkpointing output_past
""".split())


def read_config(directory: Path) -> dict:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a Hugging Face model directory?")
    return read_json(directory / "config.json")


def read_state_dict(directory: Path) -> dict[str, Tensor]:
    """Weights from model.safetensors (single or sharded), else pytorch_model.bin read with
    ``torch.load(weights_only=True)``: nothing is unpickled beyond tensors."""
    try:
        if (directory / SAFETENSORS).is_file():
            return safetensors.torch.load_file(str(directory / SAFETENSORS))
        if (directory / SHARD_INDEX).is_file():
            shards = sorted(set(json.loads((directory / SHARD_INDEX).read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in safetensors.torch.load_file(str(directory / s)).items()}
        if (directory / PICKLE).is_file():
            return torch.load(directory / PICKLE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"the weights in {directory} are corrupt or unreadable "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from e
    raise CheckpointError(f"no weights in {directory}: expected {SAFETENSORS}, {SHARD_INDEX} or {PICKLE}")


def write(directory: Path, config: dict, state_dict: dict[str, Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(directory / SAFETENSORS,
                 lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")


def labels_from_hf(hf_config: dict) -> list[str]:
    """The class names of an image classifier's config, in label order (id2label)."""
    id2label = hf_config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def labels_to_hf(names: list[str]) -> dict:
    return {"id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)}}


def joined(sd: dict[str, Tensor], names: list[str]) -> Tensor:
    """The tensors ``names`` of a checkpoint (a layer's separate query, key and value
    projections) taken out of ``sd`` and concatenated along dim 0: qkv's fused ``c_attn``.
    One that is missing is an error naming it."""
    missing = [n for n in names if n not in sd]
    if missing:
        raise ConfigError(f"the checkpoint lacks {', '.join(missing)}")
    return torch.cat([sd.pop(n) for n in names])
