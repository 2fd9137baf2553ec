"""One Trainer for every task.

A task hands the Trainer a model and three functions:
- ``batches(first, count)``: samples ``first .. first+count-1`` of the training stream, a
  pure function of the sample index, so that resuming at any step sees the same data;
- ``loss(model, batch)``: the scalar training loss;
- ``evaluate(model)``: validation metrics, a dict of floats (optional).
The Trainer owns everything else: AdamW, the schedule, accumulation, clipping, autocast,
torch.compile, checkpoints, resume, metrics and progress.

Under torchrun (see ``distributed.py``) ``train.batch_size`` is the global micro-batch:
rank r of N trains on samples ``first + r*B/N .. first + (r+1)*B/N - 1`` of it, through
DistributedDataParallel, which averages the gradients. N processes therefore take the
same steps as one process with the same config, and a run can resume on another number
of processes (the position in the data is counted in global samples). ``loss`` must call
the model (``model(...)``), which is what lets DDP synchronise the gradients. Every rank
evaluates (the same batches, so the same numbers); rank 0 alone logs and checkpoints.

A step whose loss or gradient norm is not finite is never applied. With
``train.nonfinite = "stop"`` (the default) the run stops with TrainingDiverged, its last
checkpoint untouched; with ``"skip"`` the step's update is dropped (the step still counts,
so the data order stays the same), ``skipped_steps`` in the metrics counts such steps, and
after ``MAX_SKIPPED_IN_A_ROW`` of them in a row the run stops all the same. All ranks
decide together, on the all-reduced loss and a flag any rank may raise.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from ..device import resolve_device
from ..errors import ConfigError, TrainingDiverged
from ..io import latest_checkpoint
from .checkpoint import load_checkpoint, save_checkpoint
from . import distributed
from .config import TrainConfig
from .metrics import MetricsLog, NullLog
from .optim import learning_rate, make_optimizer


MAX_SKIPPED_IN_A_ROW = 100  # train.nonfinite="skip" gives up after this many bad steps in a row


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C or SIGTERM, once the state at that step is checkpointed."""


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16): there
    bf16 matmul runs several times faster than fp32 (on a 2-core AMX Xeon, 2048^3: 1.6
    TFLOP/s against 0.26); elsewhere it is emulated and slower than fp32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast: ``"auto"`` on CUDA, ``"bf16"`` on CUDA or a CPU with native bf16 matmul.
    ``"auto"`` keeps CPU runs fp32, so that their losses stay those of fp32 kernels."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_matmul():
        raise ConfigError("train.precision=\"bf16\" on this CPU would be slower than fp32: it has neither "
                          "AMX nor AVX512-BF16 to multiply bf16 natively; use \"fp32\" or \"auto\"")
    if precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.precision=\"bf16\" needs a CUDA device or a CPU; this run is on {device.type}")
    if device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _finite(x: float, digits: int) -> float | None:
    """A metric for the log: None (JSON null) for a skipped step's NaN or inf."""
    return round(x, digits) if math.isfinite(x) else None


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        run_dir: str | Path,
        *,
        batches: Callable[[int, int], Any],
        loss: Callable[[nn.Module, Any], torch.Tensor],
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        tokens_per_sample: int = 0,
        progress: bool = True,
    ):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world, self.device = distributed.setup(resolve_device(cfg.device, "train.device"))
        # train.batch_size unset: each process takes one of the task's batches (token-budgeted ones)
        self.batch_size = cfg.batch_size or self.world.world_size
        if self.batch_size % self.world.world_size:
            raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by the number of "
                              f"processes ({self.world.world_size}): each takes an equal share")
        self.autocast = autocast_context(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.sharded = self.world.enabled and cfg.strategy == "fsdp"
        if self.sharded and cfg.optimizer != "adamw":
            raise ConfigError(f"train.optimizer = \"{cfg.optimizer}\" does not shard with FSDP yet; use "
                              "train.strategy = \"ddp\" or train.optimizer = \"adamw\"")
        self.ddp = None
        if self.sharded:
            distributed.shard(self.model)
        elif self.world.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.eager_model = self.ddp or self.model
        self.forward_model = torch.compile(self.eager_model) if cfg.compile else self.eager_model
        self.batches, self.loss_fn, self.evaluate_fn = batches, loss, evaluate
        self.tokens_per_step = tokens_per_sample * self.batch_size * cfg.grad_accum
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.progress = progress and self.world.is_main
        self.step = 0
        self.skipped, self.skipped_in_a_row = 0, 0  # steps not applied: non-finite loss or gradient
        self._stop_signal: int | None = None

    # -- one optimizer step -------------------------------------------------------------
    def _forward_backward(self) -> tuple[float, float]:
        """Gradients of the step's micro-batches; returns this rank's loss and the (global)
        gradient norm."""
        cfg = self.cfg
        total = 0.0
        share = self.batch_size // self.world.world_size
        for micro in range(cfg.grad_accum):
            first = (self.step * cfg.grad_accum + micro) * self.batch_size + self.world.rank * share
            batch = to_device(self.batches(first, share), self.device)
            last = micro == cfg.grad_accum - 1  # DDP averages the gradients once, after the last
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                with self.autocast():
                    loss = self.loss_fn(self.forward_model, batch) / cfg.grad_accum
                loss.backward()
            total += loss.item()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure, don't clip
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return total, float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)

    def _forward_backward_with_fallback(self) -> tuple[float, float]:
        if self.forward_model is self.eager_model:
            return self._forward_backward()
        try:
            return self._forward_backward()
        except Exception as e:  # torch.compile unavailable here (no compiler, unsupported op)
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); continuing uncompiled")
            self.forward_model = self.eager_model
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward()

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step; returns the loss of the global batch and the gradient norm."""
        lr = learning_rate(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = self._forward_backward_with_fallback()
        bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if self.world.enabled:  # the global batch's loss; and every rank stops or skips together
            loss, stop, bad = distributed.all_reduce([loss / self.world.world_size,
                                                      float(self._stop_signal is not None), float(bad)])
            if stop and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        if bad:  # checked before the update: the model and optimizer keep their good state
            self._not_finite(loss, grad_norm)
        else:
            self.optimizer.step()
            self.skipped_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, grad_norm

    def _not_finite(self, loss: float, grad_norm: float) -> None:
        """Count a step whose update is dropped, or raise TrainingDiverged."""
        step = self.step + 1
        self.skipped += 1
        self.skipped_in_a_row += 1
        skip = self.cfg.nonfinite == "skip"
        if skip and self.skipped_in_a_row <= MAX_SKIPPED_IN_A_ROW:
            if self.world.is_main:
                tqdm.write(f"step {step}: loss {loss:.4g}, gradient norm {grad_norm:.4g}; not applied "
                           f"(train.nonfinite=\"skip\", {self.skipped} skipped so far)", file=sys.stderr)
            return
        ckpt = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint, {ckpt}, is kept" if ckpt else "no checkpoint was written"
        why = (f"{self.skipped_in_a_row} steps in a row had a non-finite loss or gradient"
               if skip else f"the loss is {loss:.4g} and the gradient norm {grad_norm:.4g}")
        raise TrainingDiverged(
            f"training diverged at step {step}: {why}. That step was not applied and {kept}. "
            "Lower train.lr or raise train.warmup_steps"
            + ("" if skip else ", or set train.nonfinite=\"skip\" to skip such steps"))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        try:
            with self.autocast():
                return self.evaluate_fn(self.model)
        finally:
            self.model.train()

    def checkpoint(self, samples: int, elapsed: float) -> None:
        state = {"step": self.step, "samples": samples, "elapsed_s": round(elapsed, 3),
                 "world_size": self.world.world_size, "skipped_steps": self.skipped}
        save_checkpoint(self.run_dir, self.model, self.optimizer, state, self.cfg.keep_checkpoints,
                        sharded=self.sharded)

    # -- the loop -------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self._stop_signal is not None:  # a second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self._stop_signal = signum

    def fit(self) -> dict[str, float]:
        """Train to ``max_steps``, resuming from the latest checkpoint if there is one."""
        cfg = self.cfg
        state = load_checkpoint(self.run_dir, self.model, self.optimizer, sharded=self.sharded)
        self.step = state["step"] if state else 0
        self.skipped = state.get("skipped_steps", 0) if state else 0
        elapsed0 = state["elapsed_s"] if state else 0.0
        main = self.world.is_main
        if state and main:
            print(f"resuming {self.run_dir} from step {self.step}", file=sys.stderr)
        if self.world.rank:  # dropout: each rank its own stream, derived from the run's
            torch.manual_seed(int(torch.randint(2**62, (1,))) + self.world.rank)
        log = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step) if main else NullLog()
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
        last: dict[str, float] = {}
        start = time.perf_counter() - elapsed0
        steps_since_log, step_time = 0, 0.0  # training time only: evaluation is not throughput
        self.model.train()
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                try:
                    loss, grad_norm = self._train_step()
                except RuntimeError as e:  # DDP's gradient all-reduce met a dead rank
                    if self.world.enabled and distributed.is_collective_failure(e):
                        raise distributed.lost_contact(e) from e
                    raise
                step_time += time.perf_counter() - t0
                steps_since_log += 1
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                    tok_s = self.tokens_per_step * steps_since_log / step_time
                    steps_since_log, step_time = 0, 0.0
                    log.write(step=self.step, loss=_finite(loss, 6), lr=learning_rate(self.step - 1, cfg),
                              grad_norm=_finite(grad_norm, 4), tokens_per_s=round(tok_s, 1),
                              elapsed_s=round(time.perf_counter() - start, 2), skipped_steps=self.skipped)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                done = self.step == cfg.max_steps
                if self.step % cfg.eval_interval == 0 or done:
                    last = self.evaluate()
                    if last and main:
                        log.write(step=self.step, **{k: round(v, 6) for k, v in last.items()})
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
                if self.step % cfg.ckpt_interval == 0 or done or self._stop_signal is not None:
                    samples = self.step * cfg.grad_accum * self.batch_size
                    self.checkpoint(samples, time.perf_counter() - start)
                if self._stop_signal is not None:
                    raise TrainingInterrupted(
                        f"stopped at step {self.step}; checkpoint saved in {self.run_dir}. "
                        "Run the same command again to resume."
                    )
        finally:
            bar.close()
            log.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return last
