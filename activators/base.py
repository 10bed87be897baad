"""The activator plugin contract."""

from __future__ import annotations

import dataclasses
import uuid
from abc import ABC, abstractmethod
from typing import ClassVar

from lsst.daf.butler import DatasetType, DimensionUniverse, Quantum
from lsst.pipe.base.pipeline_graph import TaskNode


@dataclasses.dataclass(frozen=True)
class ActivatorContext:
    """What every activator is given once per bundle."""

    local_repo: str
    """Butler config (datastore only) of the workspace's local datastore."""

    universe: DimensionUniverse
    dataset_types: dict[str, DatasetType]
    raise_on_partial_outputs: bool = True


@dataclasses.dataclass(frozen=True)
class ActivatorOutcome:
    """How a quantum that did not raise ended."""

    no_work: bool = False
    """The task found nothing to do (``NoWorkFound``); a success with a caveat."""

    already_done: bool = False
    """All outputs were already in the workspace (a resumed bundle)."""


class Activator(ABC):
    """Runs one quantum, reading inputs from and writing outputs to the local datastore.

    ``execute`` raises whatever the task raised if the quantum failed; the caller
    records the failure and blocks the quantum's descendants.
    """

    name: ClassVar[str]

    def __init__(self, context: ActivatorContext) -> None:
        self.context = context

    @abstractmethod
    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        """Run ``quantum`` of ``task_node``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held across quanta."""
