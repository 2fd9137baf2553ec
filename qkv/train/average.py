"""``qkv average``: the mean of the weights of a run's last N checkpoints (Vaswani et al.,
Section 6.1: "averaging the last 5 checkpoints")."""
from __future__ import annotations

import shutil
from pathlib import Path

import safetensors.torch

from ..files import atomic_write
from ..errors import CheckpointError
from ..io import CONFIG, WEIGHTS
from ..tokenizers import TOKENIZERS


def average_checkpoints(run_dir: str | Path, last: int, out: str | Path | None = None) -> Path:
    """Write the mean weights of the newest ``last`` checkpoints as a directory that
    ``qkv.load``, ``qkv translate`` and ``qkv evaluate`` read like the run itself."""
    run_dir = Path(run_dir)
    if last < 1:
        raise ValueError(f"--last must be >= 1, got {last}")
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    if len(ckpts) < last:
        raise CheckpointError(f"{run_dir} has {len(ckpts)} checkpoint(s), fewer than --last {last}; keep more "
                              "with train.keep_checkpoints or average fewer")
    ckpts = ckpts[-last:]
    total = None
    for ckpt in ckpts:
        try:
            sd = safetensors.torch.load_file(str(ckpt / WEIGHTS))
        except Exception as e:
            raise CheckpointError(f"{ckpt / WEIGHTS} is corrupt or missing ({type(e).__name__})") from e
        if total is None:
            total = {k: v.double() for k, v in sd.items()}
        elif sd.keys() != total.keys():
            raise CheckpointError(f"{ckpt} holds different tensors than {ckpts[0]}; not one run's checkpoints")
        else:
            for k, v in sd.items():
                total[k] += v.double()
    mean = {k: (v / len(ckpts)).to(sd[k].dtype).contiguous() for k, v in total.items()}
    out = Path(out) if out else run_dir / f"averaged-last-{last}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS, lambda tmp: safetensors.torch.save_file(mean, str(tmp), metadata={"format": "pt"}))
    for name in (CONFIG, "run.json", *(cls.filename for cls in TOKENIZERS.values())):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    return out
