"""What a user sees for bad input, a bad file or a bad environment: `qkv CMD` exits with
status 2 and prints one line that names the problem and what to do, never a traceback;
and nothing of the user's is overwritten or left behind."""
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.errors import CheckpointError, QkvError
from qkv.models import GPT, GPTConfig
from qkv.train.metrics import read_metrics

from .conftest import CHAR_CONFIG, TINY


def sets(*items):
    return [a for item in items for a in ("--set", item)]


def train_args(out, *extra):
    return ["train", str(CHAR_CONFIG), "--no-progress", *sets(*TINY, f"out_dir={out}", *extra)]


def refused(capsys, argv, *expected):
    """Run `qkv ARGV`: exit 2, one line on stderr holding each of ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith(f"qkv {argv[0]}: error: "), err
    for text in expected:
        assert text in err, err
    return err


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lm_run(data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bad-input") / "lm"
    assert main(train_args(run_dir, "train.max_steps=5")) == 0
    return run_dir


@pytest.fixture
def vit_dir(tmp_path):
    """An (untrained) 28x28 grey image classifier saved as a model directory."""
    model = qkv.models.build("vit-28-tiny", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)
    return qkv.save_model(model, tmp_path / "vit")


# -- 1. an out_dir that is not (this) qkv run ------------------------------------------------
def test_a_folder_of_the_users_files_is_refused_and_left_as_it_was(data_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "config.json").write_text('{"mine": true}\n')
    (out / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n')
    before = snapshot(out)
    refused(capsys, train_args(out, "train.max_steps=5"), f"out_dir {out} is not empty and is not a qkv run",
            "--set out_dir=runs/NEW_NAME")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "config.json", "metrics.jsonl"])  # not even a lock file


def test_a_run_killed_before_its_first_checkpoint_is_trained_over_only_with_its_config(data_root, tmp_path,
                                                                                        capsys):
    out = tmp_path / "run"
    assert main(train_args(out, "train.max_steps=5")) == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before its first checkpoint
    before = snapshot(out)
    refused(capsys, train_args(out, "train.max_steps=5", "model.n_layer=1"),
            f"cannot reuse {out} (it has no checkpoint yet)", "model.n_layer: 2 -> 1", "--set out_dir=")
    assert snapshot(out) == before
    assert main(train_args(out, "train.max_steps=5")) == 0
    assert (out / "checkpoints" / "latest").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("out", ["new", "new/nested/run"])
def test_a_bad_model_key_leaves_no_directory_behind(data_root, tmp_path, capsys, out):
    refused(capsys, train_args(tmp_path / out, "model.n_layerz=2"), "unknown config key [model] n_layerz",
            "valid keys in [model]: ", "n_layer")
    assert list(tmp_path.iterdir()) == []


# -- 2. two processes, one out_dir ---------------------------------------------------------
def test_a_second_process_is_refused_while_the_first_trains(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    forever = ["train.max_steps=100000", "train.eval_interval=100000", "train.ckpt_interval=100000"]
    first = subprocess.Popen([sys.executable, "-m", "qkv", *train_args(out, *forever)],
                             env={**os.environ, "QKV_DATA": str(data_root)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock, deadline = out / ".lock", time.time() + 180
        while time.time() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None and lock.read_text().strip() == str(first.pid), "the first run never locked"
        refused(capsys, train_args(out, *forever),
                f"{out} is being trained by another process (pid {first.pid}); wait for it or use another out_dir")
    finally:
        first.kill()
        first.wait()
    assert main(train_args(out, "train.max_steps=5")) == 0  # the kernel dropped the dead process's lock
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5]


# -- 3. every [train] key checked before anything is written -------------------------------
@pytest.mark.parametrize("item, message", [
    ('train.lr="fast"', "train.lr must be a number, got 'fast'"),
    ("train.min_lr=-0.5", "train.min_lr must be a number >= 0, got -0.5"),
    ("train.warmup_steps=-5", "train.warmup_steps must be an integer >= 0, got -5"),
    ("train.max_steps=true", "train.max_steps must be an integer, got True"),
])
def test_a_bad_train_value_is_named_and_nothing_is_written(data_root, tmp_path, capsys, item, message):
    refused(capsys, train_args(tmp_path / "run", item), message)
    assert not (tmp_path / "run").exists()


# -- 4. the environment: devices, options, images, folders ---------------------------------
def test_a_device_this_machine_lacks_is_named(lm_run, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(capsys, ["generate", str(lm_run), "--device", "cuda"], "no CUDA GPU; use cpu (or auto)")
    refused(capsys, ["generate", str(lm_run), "--device", "bogus"], "'bogus' is not a device; use auto, cpu")


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_temperature_that_is_not_a_number_from_0_up_is_refused(lm_run, capsys, value):
    refused(capsys, ["generate", str(lm_run), "--temperature", value, "--max-new-tokens", "3"],
            f"temperature must be a number >= 0 (0 = greedy), got {float(value)}")


def test_classify_top_must_be_positive(vit_dir, tmp_path, capsys):
    refused(capsys, ["classify", str(vit_dir), str(tmp_path / "img.png"), "--top", "-1"],
            "--top must be at least 1, got -1")


def huge_png(path, width=20000, height=20000):
    """A valid black-and-white PNG of width x height pixels, ~50 KB (its rows compress to nothing)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = (b"\0" * (1 + width // 8)) * height  # filter byte + 1 bit per pixel, all black
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_in_one_line(vit_dir, tmp_path, capsys):
    start = time.perf_counter()
    big = huge_png(tmp_path / "huge.png")
    refused(capsys, ["classify", str(vit_dir), str(big)], f"{big} is too large to open safely",
            "400,000,000 pixels", "resize the image first")
    assert time.perf_counter() - start < 5


def test_an_out_dir_inside_a_file_is_named(data_root, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("mine\n")
    refused(capsys, train_args(tmp_path / "file.txt" / "run"),
            f"is inside {tmp_path / 'file.txt'}, which is a file, not a folder; choose another out_dir")
    assert (tmp_path / "file.txt").read_text() == "mine\n"


def test_a_read_only_folder_is_named(data_root, tmp_path, capsys, monkeypatch):
    import pathlib

    def read_only(self, *args, **kwargs):  # root ignores chmod, so the file system says no here
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    refused(capsys, train_args(tmp_path / "run"), f"cannot write {tmp_path / 'run'} (Permission denied)",
            "read-only: choose a writable out_dir")


def test_evaluate_options_of_another_task_are_a_usage_error(lm_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(lm_run), "--beam", "4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --beam 4 (a lm run's evaluate takes no options of its own)" in err
    assert err.startswith("usage: qkv evaluate") and "Traceback" not in err


# -- 5. a metrics line cut short ---------------------------------------------------------------
def test_a_run_resumes_past_a_partial_metrics_line_and_says_so(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(out, "train.max_steps=5")) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9')  # the run was killed while writing this line
    capsys.readouterr()
    assert main(train_args(out, "train.max_steps=10")) == 0
    err = capsys.readouterr().err
    assert f"warning: {out / 'metrics.jsonl'}: dropped its incomplete last line" in err
    assert "Traceback" not in err
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == list(range(1, 11))


# -- 6. a model directory whose config.json is wrong -------------------------------------------
@pytest.fixture
def model_dir(tmp_path):
    return qkv.save_model(GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=32)),
                          tmp_path / "model")


def edit_config(model_dir, **fields):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize("field, value, message", [
    ("dropout", "x", "model.dropout must be a number, got 'x'"),
    ("bias", "no", "model.bias must be true or false, got 'no'"),
])
def test_a_wrong_typed_config_field_is_named(model_dir, capsys, field, value, message):
    edit_config(model_dir, **{field: value})
    with pytest.raises(QkvError, match=message):
        qkv.load(model_dir)
    refused(capsys, ["generate", str(model_dir)], message)


def test_a_config_that_is_not_a_json_object_is_named(model_dir, capsys):
    (model_dir / "config.json").write_text("[1, 2]\n")
    message = f"{model_dir / 'config.json'} must be a JSON object"
    with pytest.raises(CheckpointError, match=message):
        qkv.load(model_dir)
    refused(capsys, ["generate", str(model_dir)], message, "got a list")


def test_weights_of_another_shape_name_the_tensor_and_both_shapes(model_dir, capsys):
    edit_config(model_dir, n_embd=64)  # n_head=2 still divides it
    message = ("tensor transformer.wpe.weight has shape (8, 32) in the file but (8, 64) in the model the "
               "config describes; restore the config.json")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        qkv.load(model_dir)
    refused(capsys, ["generate", str(model_dir)], message)
