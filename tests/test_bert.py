"""qkv.BERT against transformers' BERT: same outputs from the same checkpoint, both ways."""
import pytest
import torch
import transformers

import qkv
from qkv.config import ConfigError

HF_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
HF_CLASSES = {"mlm": "BertForMaskedLM", "classifier": "BertForSequenceClassification", "none": "BertModel"}


def hf_model(head, path, **extra):
    cfg = transformers.BertConfig(**HF_TINY, num_labels=3, **extra)
    model = getattr(transformers, HF_CLASSES[head])(cfg).eval()
    model.save_pretrained(path)
    return model


def hf_output(model, head, ids, mask, types):
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    return out.last_hidden_state if head == "none" else out.logits


def qkv_output(model, head, ids, mask, types):
    if head == "none":
        return model.forward_features(ids, mask, types)
    return model(ids, mask, types)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    types = torch.randint(0, 2, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask, types


@pytest.mark.parametrize("head", ["mlm", "classifier", "none"])
def test_from_hf_matches_transformers(tmp_path, head):
    theirs = hf_model(head, tmp_path)
    ours = qkv.from_hf(tmp_path)
    assert isinstance(ours, qkv.BERT) and ours.config.head == head
    ids, mask, types = batch()
    with torch.no_grad():
        full = (hf_output(theirs, head, ids, None, types) - qkv_output(ours, head, ids, None, types)).abs().max()
        a, b = hf_output(theirs, head, ids, mask, types), qkv_output(ours, head, ids, mask, types)
    assert full <= 1e-4
    if head == "classifier":  # [CLS] is never padding: the whole output is comparable
        assert (a - b).abs().max() <= 1e-4
    else:
        assert (a - b)[mask.bool()].abs().max() <= 1e-4


@pytest.mark.parametrize("head", ["mlm", "classifier", "none"])
def test_save_hf_round_trips_through_transformers(tmp_path, head):
    config = qkv.BERTConfig(**HF_TINY, head=head, num_labels=3, add_pooler=head != "mlm", dropout=0.0)
    ours = qkv.BERT(config).eval()
    ours.save_hf(tmp_path)
    theirs = getattr(transformers, HF_CLASSES[head]).from_pretrained(tmp_path).eval()
    back = qkv.from_hf(tmp_path)
    ids, mask, types = batch()
    with torch.no_grad():
        a = qkv_output(ours, head, ids, mask, types)
        assert (a - hf_output(theirs, head, ids, mask, types))[mask.bool() if head != "classifier" else ...].abs().max() <= 1e-4
        assert torch.equal(a, qkv_output(back, head, ids, mask, types))


def test_padding_never_leaks_into_real_tokens():
    model = qkv.BERT(qkv.BERTConfig(**HF_TINY, dropout=0.0)).eval()
    ids = torch.randint(1, 99, (1, 6))
    padded = torch.cat([ids, torch.randint(1, 99, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    with torch.no_grad():
        alone = model(ids)
        in_batch = model(padded, mask)
    assert torch.allclose(alone, in_batch[:, :6], atol=1e-5)


def test_mlm_loss_equals_transformers_loss(tmp_path):
    theirs = hf_model("mlm", tmp_path)
    ours = qkv.from_hf(tmp_path)
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 5] = ids[0, 5]
    with torch.no_grad():
        loss_theirs = theirs(input_ids=ids, attention_mask=mask, labels=labels).loss
        _, loss_ours = ours(ids, mask, labels=labels)
    assert abs(loss_theirs.item() - loss_ours.item()) <= 1e-4


def test_bad_input_is_a_clear_error(tmp_path):
    model = qkv.BERT(qkv.BERTConfig(**HF_TINY, head="none"))
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model.forward_features(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="no head"):
        model(torch.zeros(1, 5, dtype=torch.long))
    hf_model("mlm", tmp_path, position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match="absolute positions"):
        qkv.from_hf(tmp_path)


def test_a_checkpoint_missing_a_projection_is_named(tmp_path):
    import safetensors.torch

    hf_model("none", tmp_path)
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    name = next(k for k in weights if k.endswith("layer.1.attention.self.key.weight"))
    del weights[name]
    safetensors.torch.save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=f"the checkpoint lacks {name.removeprefix('bert.')}"):
        qkv.from_hf(tmp_path)
