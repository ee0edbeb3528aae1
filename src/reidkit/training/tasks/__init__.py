"""Training tasks: what to optimise for each kind of model. A model's registration names its task
(`register_model(name, task="pair")`); `task_for_model` finds it, so nothing routes by lists of names."""

from __future__ import annotations

from ...models.registry import model_spec
from . import attributes, plnet  # noqa: F401  (register the attributes (ACRN) and plnet tasks)
from .base import Member, Task, register_task, task_class
from .embedding import EmbeddingTask
from .pair import PairTask
from .parts import PartsTask  # noqa: F401  (registers the "parts" task: GLAD, SpindleNet)
from .tracklet import TrackletTask


def task_for_model(model_name: str) -> type[Task]:
    """The task class that trains registered model `model_name`."""
    return task_class(model_spec(model_name).task)


__all__ = ["EmbeddingTask", "Member", "PairTask", "Task", "TrackletTask", "register_task", "task_class",
           "task_for_model"]
