"""iGPT: qkv's image GPT against Hugging Face's ImageGPT itself (small random configs, both
directions), the palette, causality and the start token, KV-cache completion, and the
image_lm task through `qkv train`, `qkv evaluate`, `qkv complete` and `qkv probe` on the
Fashion-MNIST fixture."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ImageGPTConfig as HFImageGPTConfig
from transformers import ImageGPTForCausalImageModeling, ImageGPTModel
from transformers.models.imagegpt.image_processing_pil_imagegpt import ImageGPTImageProcessorPil

import qkv
from qkv import data
from qkv.cli import main
from qkv.data.palette import downsample, fit_palette, kmeans_1d, to_pixels, to_tokens
from qkv.errors import ConfigError, DataError
from qkv.inference.complete import complete
from qkv.models import ImageGPT
from qkv.tasks import TASKS
from qkv.train.config import load_run_config
from qkv.train.metrics import read_metrics

from .conftest import CHAR_CONFIG, FIXTURES, ROOT, TINY

CONFIG = ROOT / "configs" / "igpt-fashion-mnist.toml"
HF_CONFIGS = {
    "odd-heads": dict(n_embd=48, n_head=3, n_layer=2),
    "inner-eps-gelu": dict(n_embd=32, n_head=2, n_layer=2, n_inner=80, layer_norm_epsilon=1e-6,
                           activation_function="gelu"),
    "inverse-layer-scaling": dict(n_embd=32, n_head=4, n_layer=3, scale_attn_by_inverse_layer_idx=True),
    "unscaled-attention": dict(n_embd=32, n_head=4, n_layer=2, scale_attn_weights=False),
}
K, SIDE = 8, 7  # 8 palette entries + the start token; 7x7 = 49 positions


def hf_imagegpt(cls=ImageGPTForCausalImageModeling, **kw):
    torch.manual_seed(0)
    config = HFImageGPTConfig(vocab_size=K + 1, n_positions=SIDE * SIDE, resid_pdrop=0.0, embd_pdrop=0.0,
                              attn_pdrop=0.0, **kw)
    model = cls(config).eval()
    with torch.no_grad():  # make the norm gains and biases count, and every weight random
        for name, p in model.named_parameters():
            gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
            p.copy_((1.0 if gain else 0.0) + 0.1 * torch.randn_like(p) if gain or name.endswith("bias")
                    else 0.05 * torch.randn_like(p))
    return model


def hf_output(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def ours(model, x):
    return model(x) if model.lm_head is not None else model.forward_features(x)


# -- parity with transformers ----------------------------------------------------------------
@pytest.mark.parametrize("cls", [ImageGPTForCausalImageModeling, ImageGPTModel])
@pytest.mark.parametrize("name", HF_CONFIGS)
def test_from_hf_and_save_hf_match_transformers(tmp_path, name, cls):
    hf = hf_imagegpt(cls, **HF_CONFIGS[name])
    hf.save_pretrained(tmp_path / "in")
    model = qkv.from_hf(tmp_path / "in")
    assert isinstance(model, ImageGPT) and model.config.image_size == SIDE
    assert (model.lm_head is None) == (cls is ImageGPTModel)
    x = torch.randint(0, K + 1, (2, SIDE * SIDE))
    with torch.no_grad():
        expected = hf_output(hf, x)
        assert expected.shape[-1] == (K if cls is ImageGPTForCausalImageModeling else HF_CONFIGS[name]["n_embd"])
        assert (ours(model, x) - expected).abs().max() <= 1e-4
        model.save_hf(tmp_path / "out")
        again = cls.from_pretrained(tmp_path / "out").eval()
        assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [cls.__name__]
        assert (hf_output(again, x) - ours(model, x)).abs().max() <= 1e-4
        assert torch.equal(ours(qkv.from_hf(tmp_path / "out"), x), ours(model, x))  # qkv -> HF -> qkv


def test_a_model_trained_in_qkv_loads_in_transformers(tmp_path):
    model = qkv.models.build("igpt", n_layer=2, n_head=2, n_embd=32, vocab_size=K + 1, image_size=SIDE,
                             block_size=SIDE * SIDE, palette=[float(v) for v in range(0, 256, 32)]).eval()
    model.save_hf(tmp_path)
    hf = ImageGPTForCausalImageModeling.from_pretrained(tmp_path).eval()
    x = torch.randint(0, K + 1, (3, SIDE * SIDE))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() <= 1e-4


def test_the_palette_travels_as_grey_clusters_that_transformers_quantizes_alike(tmp_path):
    palette = [3.5, 40.25, 90.0, 128.0, 170.75, 200.0, 230.5, 252.0]
    model = qkv.models.build("igpt", n_layer=1, n_head=2, n_embd=16, vocab_size=K + 1, image_size=SIDE,
                             block_size=SIDE * SIDE, palette=palette)
    model.save_hf(tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert len(pre["clusters"]) == K and pre["clusters"][0] == [3.5 / 127.5 - 1] * 3
    back = qkv.from_hf(tmp_path)
    assert back.config.palette == palette and back.config.image_size == SIDE
    grey = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    processor = ImageGPTImageProcessorPil.from_pretrained(tmp_path)
    hf_ids = processor(images=Image.fromarray(grey).convert("RGB"), return_tensors="pt")["input_ids"]
    assert torch.equal(hf_ids.long(), to_tokens(torch.from_numpy(grey)[None], palette))


def test_hf_fields_qkv_cannot_honour_are_errors(tmp_path):
    hf_imagegpt(**HF_CONFIGS["odd-heads"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in [({"tie_word_embeddings": True}, "cannot share"),
                            ({"add_cross_attention": True}, "cross-attention"),
                            ({"rotary_dim": 8}, "rotary_dim"),
                            ({"attn_pdrop": 0.3}, "one dropout rate"),
                            ({"architectures": ["ImageGPTForImageClassification"]}, "ImageGPTModel checkpoints")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError, match=message):
            qkv.from_hf(tmp_path)


def test_every_field_transformers_writes_is_understood():
    from qkv.interop.imagegpt import config_from_hf

    c = config_from_hf(HFImageGPTConfig().to_dict(), has_head=True)
    assert (c.vocab_size, c.block_size, c.image_size, c.lm_head_size, c.activation) == (513, 1024, 32, 512,
                                                                                      "quick_gelu")


# -- GPT's options, and GPT unchanged ----------------------------------------------------------
def test_gpt_is_unchanged_by_default_and_refuses_imagegpt_options_as_gpt2(tmp_path):
    gpt = qkv.models.build("gpt", n_layer=1, n_head=2, n_embd=32, vocab_size=16, block_size=8)
    names = set(gpt.state_dict())
    assert {"transformer.ln_f.bias", "transformer.h.0.ln_1.bias"} <= names
    assert gpt.lm_head.weight is gpt.transformer.wte.weight  # tied, vocab_size outputs
    rms = qkv.models.build("gpt", n_layer=1, n_head=2, n_embd=32, vocab_size=16, block_size=8, norm="rmsnorm")
    assert "transformer.ln_f.bias" not in rms.state_dict()
    with pytest.raises(ConfigError, match="no GPT-2 twin"):
        rms.save_hf(tmp_path)
    with pytest.raises(ConfigError, match="set tie_word_embeddings=false"):
        qkv.models.build("gpt", vocab_size=16, lm_head_size=15)
    with pytest.raises(ConfigError, match="norm must be one of"):
        qkv.models.build("gpt", norm="batchnorm")


def test_rms_norm_is_imagegpts_layer_norm():
    model = qkv.models.build("igpt", n_layer=1, n_head=2, n_embd=16, vocab_size=K + 1, image_size=SIDE,
                             block_size=SIDE * SIDE)
    norm = model.transformer.ln_f
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(4, 16) * 3 + 1
    assert torch.allclose(norm(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight, atol=1e-6)


# -- the palette ---------------------------------------------------------------------------------
def test_kmeans_on_a_histogram_finds_the_hand_computed_centres():
    counts = np.zeros(256, dtype=np.int64)
    counts[[0, 2, 100, 104, 250]] = [10, 10, 5, 15, 1]
    assert kmeans_1d(counts, 3) == [1.0, 103.0, 250.0]  # (0*10 + 2*10)/20, (100*5 + 104*15)/20, 250
    assert kmeans_1d(counts, 1) == [pytest.approx((20 + 500 + 1560 + 250) / 41)]
    counts = np.zeros(256, dtype=np.int64)
    counts[[10, 20, 30, 200]] = [1, 1, 1, 3]
    assert kmeans_1d(counts, 2) == [20.0, 200.0]
    with pytest.raises(DataError, match="4 distinct grey levels"):
        kmeans_1d(counts, 5)
    # the optimum, as an exhaustive search over contiguous splits finds it
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 256, 2000) // 37 * 37, minlength=256)
    levels = np.arange(256)

    def sse(centres):
        return float((counts * np.min((levels[:, None] - np.array(centres)) ** 2, 1)).sum())

    present = np.flatnonzero(counts)
    best = min(sse([np.average(part, weights=counts[part]) for part in np.split(present, [i, j])])
               for i in range(1, len(present)) for j in range(i + 1, len(present)))
    assert sse(kmeans_1d(counts, 3)) == pytest.approx(best)


def test_pixels_to_tokens_and_back():
    palette = [10.0, 100.0, 200.0]
    pixels = torch.tensor([[[0, 54, 55, 56], [150, 151, 255, 100], [10, 99, 101, 149], [200, 201, 180, 30]]],
                          dtype=torch.uint8)
    tokens = to_tokens(pixels, palette)
    assert tokens.tolist() == [[0, 0, 0, 1, 1, 2, 2, 1, 0, 1, 1, 1, 2, 2, 2, 0]]  # 55: a tie, the first wins
    back = to_pixels(tokens, palette, 4)
    assert back.dtype == torch.uint8 and back.shape == (1, 4, 4)
    assert torch.equal(to_tokens(back, palette), tokens)  # palette pixels map to themselves
    assert back[0, 0].tolist() == [10, 10, 10, 100]
    with pytest.raises(DataError, match="no palette"):
        to_tokens(pixels, [])


def test_downsampling_averages_areas():
    images = torch.arange(16, dtype=torch.uint8).view(1, 4, 4) * 10
    assert downsample(images, 2).tolist() == [[[25, 45], [105, 125]]]  # means of the 2x2 blocks
    assert downsample(images, 4) is images
    with pytest.raises(DataError, match="cannot be reduced"):
        downsample(images, 5)
    assert fit_palette(images, 2) == [35.0, 115.0]


# -- the model -------------------------------------------------------------------------------------
@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return qkv.models.build("igpt", n_layer=2, n_head=2, n_embd=32, vocab_size=K + 1, image_size=SIDE,
                            block_size=SIDE * SIDE, palette=[float(v) for v in range(0, 256, 32)]).eval()


def test_start_token_and_head(tiny):
    c = tiny.config
    assert c.start_token == K and tiny.lm_head.out_features == K and tiny.transformer.wte.num_embeddings == K + 1
    tokens = torch.randint(0, K, (3, SIDE * SIDE))
    x, y = tiny.training_pair(tokens)
    assert x.shape == y.shape == (3, SIDE * SIDE) and (x[:, 0] == K).all() and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ConfigError, match="palette tokens"):
        qkv.models.build("igpt", vocab_size=K + 1, lm_head_size=K + 1)
    with pytest.raises(ConfigError, match="the palette has 3 entries"):
        qkv.models.build("igpt", vocab_size=K + 1, palette=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="set block_size=196"):
        qkv.models.build("igpt", image_size=14, block_size=100)


def test_changing_a_later_pixel_leaves_earlier_logits_unchanged(tiny):
    x = tiny.training_pair(torch.randint(0, K, (1, SIDE * SIDE)))[0]
    changed = x.clone()
    changed[0, 30] = (x[0, 30] + 1) % K
    with torch.no_grad():
        a, b = tiny(x), tiny(changed)
    assert torch.equal(a[0, :30], b[0, :30])
    assert not torch.allclose(a[0, 30:], b[0, 30:])


def test_kv_cache_completion_equals_full_recomputation(tiny):
    images = torch.randint(0, 256, (2, SIDE, SIDE), dtype=torch.uint8)
    cached = complete(tiny, images, samples=2, temperature=0)
    again = complete(tiny, images, samples=2, temperature=0, use_cache=False)
    assert torch.equal(cached, again) and cached.shape == (2, 2, SIDE * SIDE)
    given = to_tokens(images, tiny.config.palette)[:, :3 * SIDE]  # the top 3 of 7 rows
    assert torch.equal(cached[:, 0, :3 * SIDE], given) and torch.equal(cached[:, 1], cached[:, 0])  # greedy
    # and greedy is the argmax of the full forward pass at every generated position
    for i in range(2):
        x = tiny.training_pair(cached[i, :1])[0]
        with torch.no_grad():
            assert torch.equal(tiny(x)[0, 3 * SIDE:].argmax(-1), cached[i, 0, 3 * SIDE:])
    sampled = complete(tiny, images, samples=3, temperature=1.0, seed=0)
    assert int(sampled.max()) < K  # the start token is never produced
    assert torch.equal(sampled, complete(tiny, images, samples=3, temperature=1.0, seed=0))


# -- the task through the command line ---------------------------------------------------------
TINY_IGPT = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "train.batch_size=8", "train.max_steps=4",
             "train.warmup_steps=1", "train.log_interval=1", "train.eval_interval=2", "train.eval_batches=1",
             "train.ckpt_interval=2"]


@pytest.fixture(scope="module")
def image_data(data_root):
    data.get("fashion-mnist", source=FIXTURES / "fashion-mnist", log=lambda *a: None)
    return data_root


def train(out, *extra):
    args = ["train", str(CONFIG), "--no-progress", "--set", f"out_dir={out}"]
    for item in (*TINY_IGPT, *extra):
        args += ["--set", item]
    assert main(args) == 0


@pytest.fixture(scope="module")
def run(image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "igpt"
    train(out)
    return out


def test_training_stores_the_palette_and_logs_nats_per_pixel(run, capsys):
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "igpt" and config["vocab_size"] == 9 and config["image_size"] == 14
    assert len(config["palette"]) == 8 and config["palette"] == sorted(config["palette"])
    assert config["block_size"] == 196 and config["lm_head_size"] == 8 and config["norm"] == "rmsnorm"
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    first = [r for r in records if "loss" in r][0]
    assert abs(first["loss"] - np.log(8)) < 0.5  # starts near uniform over 8 grey levels
    model, tokenizer = qkv.load(run)
    assert isinstance(model, ImageGPT) and tokenizer is None
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    values = dict(line.split() for line in out.strip().splitlines())
    assert float(values["bits_per_dim"]) == pytest.approx(float(values["nats_per_pixel"]) / np.log(2), rel=1e-3)
    assert int(values["images"]) == 60 and int(values["pixels"]) == 60 * 196


def test_resume_sees_the_same_batches(image_data, tmp_path):
    train(tmp_path / "full")
    train(tmp_path / "half", "train.max_steps=2")
    train(tmp_path / "half")
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
              for d in (tmp_path / "full", tmp_path / "half")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_complete_draws_the_grid_and_keeps_the_given_half(run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["complete", str(run), "--n", "3", "--samples-per-image", "2", "--seed", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out), str(out.with_suffix(".json"))]
    assert out.read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads(out.with_suffix(".json").read_text())
    originals, done = np.array(numbers["originals"]), np.array(numbers["completions"])
    assert originals.shape == (3, 14, 14) and done.shape == (3, 2, 14, 14) and numbers["rows_given"] == 7
    assert (done[:, :, :7] == originals[:, None, :7]).all()  # the top half is the image's own
    assert set(np.unique(done)) <= {round(g) for g in numbers["palette"]}
    # image files: a larger square is reduced as the training images were; other shapes are refused
    test_images = data.images.load_split(data.prepared("fashion-mnist"), "test")[0]
    Image.fromarray(test_images[0]).save(tmp_path / "full.png")
    Image.fromarray(test_images[1][:, :20]).save(tmp_path / "narrow.png")
    Image.fromarray(test_images[1][:10, :10]).save(tmp_path / "small.png")
    assert main(["complete", str(run), "--image", str(tmp_path / "full.png"), "--temperature", "0",
                 "--out", str(tmp_path / "file.png")]) == 0
    capsys.readouterr()
    from_file = np.array(json.loads((tmp_path / "file.json").read_text())["originals"])
    assert (from_file[0] == originals[0]).all()  # the same pixels as test image #0 of the run's data
    for bad, message in [("narrow.png", "is 20x28 pixels; the model reads square"),
                         ("small.png", "at least 14x14")]:
        assert main(["complete", str(run), "--image", str(tmp_path / bad)]) == 2
        assert message in capsys.readouterr().err


def test_probe_prints_a_row_per_layer_and_writes_its_files(run, tmp_path, capsys):
    assert main(["probe", str(run), "--train-count", "200", "--test-count", "60", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)
    numbers = json.loads((tmp_path / "probe.json").read_text())
    assert numbers["layers"] == [1, 2] and len(numbers["accuracy"]) == 2
    assert numbers["train_images"] == 200 and numbers["test_images"] == 60
    assert all(0.0 <= a <= 1.0 for a in [*numbers["accuracy"], numbers["pixels_accuracy"]])
    assert (tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_line_and_exit_2(run, data_root, tmp_path, capsys):
    for args, message in [(["complete", str(run), "--n", "0"], "--n must be at least 1"),
                          (["complete", str(run), "--samples-per-image", "0"], "--samples-per-image must be"),
                          (["complete", str(run), "--temperature", "-1"], "temperature must be"),
                          (["complete", str(run), "--split", "nope"], "no 'nope' split"),
                          (["complete", str(run), "--image", str(tmp_path / "missing.png")], "no such file"),
                          (["probe", str(run), "--train-count", "0"], "--train-count must be at least 2")]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    lm = tmp_path / "lm"
    lm_args = ["train", str(CHAR_CONFIG), "--no-progress", "--set", f"out_dir={lm}", "--set", "train.max_steps=1"]
    for item in TINY:
        lm_args += ["--set", item]
    assert main(lm_args) == 0
    capsys.readouterr()
    assert main(["complete", str(lm)]) == 2
    assert "holds a 'gpt' model, not an image GPT" in capsys.readouterr().err
    assert main(["probe", str(lm)]) == 2
    assert "is a 'lm' run; qkv probe needs an image_lm run" in capsys.readouterr().err


def test_config_errors(image_data, tmp_path):
    task = TASKS["image_lm"]
    for override, message in [("model.preset=igpt-28-small", r"is for 28x28 images but data.resolution=14"),
                              ("model.vocab_size=5", r"sets vocab_size=5, but the data dictates vocab_size=9"),
                              ("model.preset=gpt2", r"role 'image_lm' \(igpt\), not 'gpt'"),
                              ("data.resolution=30", "exceeds the images' 28x28"),
                              ("data.k=1", "data.k must be in 2..256")]:
        run = load_run_config(CONFIG, [override])
        with pytest.raises(ConfigError, match=message):
            task.for_training(run, tmp_path)
    run = load_run_config(CONFIG, ["data.resolution=16", *TINY_IGPT])
    with pytest.raises(ConfigError, match=r"preset 'igpt-14-small' is for 14x14 images .* \(igpt-16-small\)"):
        task.for_training(run, tmp_path)
    run = load_run_config(CONFIG, ["data.resolution=16", "model.preset=igpt-16-small", *TINY_IGPT])
    built = task.for_training(run, tmp_path)
    assert built.model.config.image_size == 16 and built.model.config.block_size == 256
    x, y = built.batches(0, 4)
    assert x.shape == y.shape == (4, 256) and (x[:, 0] == 8).all() and int(y.max()) < 8
    assert torch.equal(built.batches(2, 2)[1], y[2:])  # a pure function of the sample index
