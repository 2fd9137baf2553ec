"""Training: one Trainer for every task, configured from TOML."""
from .config import RunConfig, TrainConfig
from .run import TASKS, train
from .trainer import Trainer, TrainingInterrupted

__all__ = ["TASKS", "RunConfig", "TrainConfig", "Trainer", "TrainingInterrupted", "train"]
