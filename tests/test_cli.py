import os
import re
import signal
import subprocess
import sys
import time

import pytest

from qkv.cli import main
from qkv.train.metrics import read_metrics

from .conftest import CHAR_CONFIG, FIXTURES, TINY


def sets(*items):
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", str(CHAR_CONFIG), "--no-progress",
                 *sets(*TINY, f"out_dir={run_dir}", "train.max_steps=20", "train.lr=3e-3")]) == 0
    return run_dir


def test_data_get_from_a_local_copy(tmp_path, capsys):
    assert main(["data", "get", "shakespeare", "--from", str(FIXTURES / "shakespeare"),
                 "--data-dir", str(tmp_path)]) == 0
    assert "3 works for training" in capsys.readouterr().out
    assert main(["data", "get", "shakespeare", "--data-dir", str(tmp_path)]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["data", "list"]) == 0 and "shakespeare" in capsys.readouterr().out


def test_generate_streams_and_is_repeatable(trained, capsys):
    args = ["generate", str(trained), "--prompt", "ROMEO:", "--max-new-tokens", "40"]
    assert main([*args, "--temperature", "0.8", "--top-k", "10", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 40 + 1
    main([*args, "--temperature", "0.8", "--top-k", "10", "--seed", "1"])
    assert capsys.readouterr().out == first
    main([*args, "--temperature", "0"])
    greedy = capsys.readouterr().out
    main([*args, "--temperature", "0"])
    assert capsys.readouterr().out == greedy


def test_bad_prompts_get_clear_errors(trained, capsys):
    assert main(["generate", str(trained), "--prompt", "ROMEO: ✓"]) == 2
    assert "never saw: '✓'" in capsys.readouterr().err
    assert main(["generate", str(trained), "--prompt", "x" * 40]) == 2
    assert "context is 32; shorten the prompt" in capsys.readouterr().err
    assert main(["generate", str(trained.parent / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_config_key_lists_the_valid_ones(data_root, tmp_path, capsys):
    assert main(["train", str(CHAR_CONFIG), "--set", "train.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key [train] learning_rate" in err and "lr" in err


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "qkv data get shakespeare" in out and "generate" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "resumes" in capsys.readouterr().out


def test_kill_9_and_restart_continues_the_curve(data_root, tmp_path):
    """A real process killed with SIGKILL mid-run, then the same command again: it resumes
    from the last checkpoint and the curve is the one an uninterrupted run draws."""
    max_steps = 40  # long enough that the run is still going when its first checkpoint lands

    def command(out):
        return [sys.executable, "-m", "qkv", "train", str(CHAR_CONFIG), "--no-progress",
                *sets(*TINY, f"out_dir={out}", f"train.max_steps={max_steps}", "model.dropout=0.1")]

    def curve(name):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    env = {**os.environ, "QKV_DATA": str(data_root)}
    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert latest.is_file(), "the run never wrote a checkpoint"
    killed_at = int(latest.read_text().strip()[len("step-"):])
    assert 0 < killed_at < max_steps
    assert max(step for step, _, _ in curve("killed")) < max_steps  # training had not reached the end

    again = subprocess.run(command(tmp_path / "killed"), env=env, check=True, capture_output=True, text=True)
    resumed = re.search(r"resuming .* from step (\d+)", again.stderr + again.stdout)
    assert resumed and int(resumed[1]) == killed_at, again.stderr[-2000:]

    straight, killed = curve("straight"), curve("killed")
    assert [step for step, loss, _ in straight if loss is not None] == list(range(1, max_steps + 1))
    assert len(killed) == len(straight)
    assert killed == straight


def test_plot_draws_the_curves_of_several_runs(trained, tmp_path, capsys):
    import matplotlib.image

    from qkv.train.plot import load_curves

    curves = load_curves(trained)
    assert curves["loss"][0] == list(range(1, 21)) and curves["val_loss"][0] == [5, 10, 15, 20]
    assert main(["plot", str(trained), str(trained), "--out", str(tmp_path / "plots")]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["loss.png", "lr.png", "throughput.png"]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0  # drawn, not blank
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_evaluate_scores_every_token_of_a_split(trained, capsys):
    assert main(["evaluate", str(trained), "--split", "val"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert float(lines["perplexity"]) == pytest.approx(2.718281828 ** float(lines["loss"]), rel=1e-3)
    assert int(lines["tokens"]) > 1000
    assert main(["evaluate", str(trained), "--split", "test"]) == 2
    assert "has no 'test' split" in capsys.readouterr().err
    assert main(["evaluate", str(trained.parent)]) == 2
    assert "not a qkv run directory" in capsys.readouterr().err
