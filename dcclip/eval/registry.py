"""The evaluation tasks, registered once with everything the report and the CLI need to know about them.

A task names the module that scores it (its scoring function, ``METRICS`` and ``COUNTS`` there, imported only
when the task runs, so building the CLI stays light), the kind of eval set it reads, its help line, the figure that
counts what was scored, a pivot language it is measured against (not reported as a row), and its metrics that are
not rates in [0, 1]. A new task is one entry here and one module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task (see the module docstring)."""

    name: str
    help: str
    dataset_kind: str  # "classification" | "retrieval"
    module: str
    function: str
    size_key: str
    pivot: str | None = None
    unbounded: tuple[str, ...] = ()

    def impl(self) -> ModuleType:
        """The module that scores the task."""
        return importlib.import_module(self.module)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metric names in report order."""
        return tuple(self.impl().METRICS)

    @property
    def counts(self) -> dict[str, str]:
        """Each metric that is a share of counted trials -> the figure holding that count (these get intervals)."""
        return dict(self.impl().COUNTS)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """Score one model on every language: ``evaluate(model, dataset, langs, batch_size=, progress=)``."""
        return getattr(self.impl(), self.function)(*args, **kwargs)


_ALL = (
    EvalTask(
        name="zeroshot",
        help="zero-shot classification: top-1, top-5, mean per-class recall per language",
        dataset_kind="classification",
        module="dcclip.eval.zeroshot",
        function="evaluate_zeroshot",
        size_key="n",
    ),
    EvalTask(
        name="retrieval",
        help="image-text retrieval: recall@1/5/10 both ways per language",
        dataset_kind="retrieval",
        module="dcclip.eval.retrieval",
        function="evaluate_retrieval",
        size_key="n_images",
    ),
    EvalTask(
        name="alignment",
        help="cross-lingual alignment of the text tower from parallel captions (no images)",
        dataset_kind="retrieval",
        module="dcclip.eval.alignment",
        function="evaluate_alignment",
        size_key="n",
        pivot="en",
        unbounded=("cos_pairs", "cos_random", "gap"),
    ),
)
TASKS: dict[str, EvalTask] = {task.name: task for task in _ALL}
UNBOUNDED = frozenset(metric for task in _ALL for metric in task.unbounded)  # cosines: may be negative


def get_task(name: str) -> EvalTask:
    """The task called ``name``, or ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
