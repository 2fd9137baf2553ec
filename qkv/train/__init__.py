"""Training: one Trainer for every task, configured from TOML."""
from .config import RunConfig, TrainConfig
from .run import evaluate_run, train
from .trainer import Trainer, TrainingInterrupted

__all__ = ["RunConfig", "TrainConfig", "Trainer", "TrainingInterrupted", "evaluate_run", "train"]
