"""Tasks: what a model is trained to do, on which data, scored how. Each is one module
behind the ``Task`` contract (``qkv/tasks/base.py``); ``TASKS`` maps the name a run config
gives (``task = "lm"``) to its class."""
from __future__ import annotations

from ..errors import ConfigError
from .base import Option, Task
from .detection import DetectionTask
from .image_classification import ImageClassificationTask
from .image_lm import ImageLMTask
from .lm import LanguageModelTask
from .mlm import MaskedLanguageModelTask
from .text_classification import TextClassificationTask
from .translation import TranslationTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    LanguageModelTask, MaskedLanguageModelTask, TranslationTask, TextClassificationTask, ImageClassificationTask,
    ImageLMTask, DetectionTask)}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; qkv knows: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "Option", "Task", "task_class"]
