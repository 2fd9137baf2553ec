"""qkv's GPT against Hugging Face's GPT-2 itself: small random configs, both directions."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import qkv
from qkv.cli import main
from qkv.config import ConfigError
from qkv.tokenizers import BPETokenizer

CONFIGS = {
    "tied-odd-heads": dict(n_embd=48, n_head=3, n_layer=2),
    "untied": dict(n_embd=64, n_head=4, n_layer=3, tie_word_embeddings=False),
    "exact-gelu-inner-eps": dict(n_embd=32, n_head=2, n_layer=2, n_inner=80,
                                 activation_function="gelu", layer_norm_epsilon=1e-6),
    "unscaled-attention": dict(n_embd=32, n_head=4, n_layer=2, scale_attn_weights=False),
    "inverse-layer-scaling": dict(n_embd=32, n_head=4, n_layer=3, scale_attn_by_inverse_layer_idx=True),
}


def hf_gpt2(vocab_size=101, **kw):
    torch.manual_seed(0)
    eos = vocab_size - 1
    config = GPT2Config(vocab_size=vocab_size, n_positions=40, bos_token_id=eos, eos_token_id=eos, **kw)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 initialises biases and LayerNorms trivially: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_from_hf_gives_transformers_logits(tmp_path, name):
    hf = hf_gpt2(**CONFIGS[name])
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    x = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_save_hf_loads_in_transformers_with_the_same_logits(tmp_path, name):
    hf = hf_gpt2(**CONFIGS[name])
    hf.save_pretrained(tmp_path / "in")
    model = qkv.from_hf(tmp_path / "in")
    model.save_hf(tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    x = torch.randint(0, 101, (2, 40))
    with torch.no_grad():
        assert (again(x).logits - model(x)).abs().max() <= 1e-4
    back = qkv.from_hf(tmp_path / "out")
    assert torch.equal(back(x), model(x))  # qkv -> HF -> qkv: bit for bit


def test_pytorch_model_bin_and_old_key_layout(tmp_path):
    hf = hf_gpt2(**CONFIGS["tied-odd-heads"])
    hf.config.save_pretrained(tmp_path)
    old = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    old["h.0.attn.bias"] = torch.ones(1, 1, 40, 40).tril()  # the buffer GPT-2 once saved
    torch.save(old, tmp_path / "pytorch_model.bin")
    x = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        assert (qkv.from_hf(tmp_path)(x) - hf(x).logits).abs().max() <= 1e-4


def test_every_field_transformers_writes_is_understood():
    from qkv.interop.gpt2 import config_from_hf

    config = config_from_hf(GPT2Config().to_dict())  # all of PretrainedConfig's keys too
    assert (config.n_layer, config.block_size, config.vocab_size) == (12, 1024, 50257)


def test_fields_qkv_cannot_honour_are_errors(tmp_path):
    hf_gpt2(**CONFIGS["tied-odd-heads"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in [({"add_cross_attention": True}, "cross-attention"),
                            ({"rotary_dim": 8}, "rotary_dim"),
                            ({"attn_pdrop": 0.3}, "one dropout rate"),
                            ({"activation_function": "relu6"}, "relu6"),
                            ({"model_type": "llama"}, "no qkv twin")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError, match=message):
            qkv.from_hf(tmp_path)


def test_greedy_generation_matches_transformers_generate(tmp_path):
    hf = hf_gpt2(**CONFIGS["untied"])
    hf.save_pretrained(tmp_path)
    model = qkv.from_hf(tmp_path)
    prompt = torch.tensor([[5, 17, 3, 99, 42]])
    expected = hf.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert model.generate(prompt, 30, temperature=0).tolist() == expected.tolist()
    # two prompts of different lengths, left-padded, in one batch
    batch = torch.tensor([[5, 17, 3, 99, 42], [0, 0, 0, 8, 61]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    expected = hf.generate(batch, attention_mask=mask, max_new_tokens=30, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert model.generate(batch, 30, temperature=0, attention_mask=mask).tolist() == expected.tolist()


def test_generate_cli_reads_a_hugging_face_directory_with_vocab_and_merges(tmp_path, capsys):
    tok = BPETokenizer.train(["To be, or not to be, that is the question.\n"] * 50, vocab_size=270)
    hf = hf_gpt2(vocab_size=tok.vocab_size, **CONFIGS["tied-odd-heads"])
    hf.save_pretrained(tmp_path)
    tok.tokenizer.model.save(str(tmp_path))  # GPT-2's layout: vocab.json + merges.txt
    assert {"vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    assert main(["generate", str(tmp_path), "--prompt", "To be", "--max-new-tokens", "12",
                 "--temperature", "0", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    model, loaded = qkv.load(tmp_path)
    ids = model.generate(torch.tensor([loaded.encode("To be")]), 12, temperature=0)
    assert out == loaded.decode(ids[0].tolist()) + "\n"
