"""The activator plugin contract."""

from __future__ import annotations

import dataclasses
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from lsst.daf.butler import LimitedButler, Quantum
from lsst.pipe.base.pipeline_graph import TaskNode


@dataclasses.dataclass(frozen=True)
class ActivatorContext:
    """What every activator is given once per bundle."""

    butler: LimitedButler
    """The bundle's butler: reads inputs (intermediates from memory) and persists outputs
    to the workspace datastore."""

    raise_on_partial_outputs: bool = True

    fresh_workspace: bool = False
    """Nothing was ever written in this workspace, so no quantum's outputs can exist yet."""

    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """This activator's ``execution.activator_settings`` entry from the bundle (it checks them)."""

    workspace: str | None = None
    """The bundle's workspace directory (scratch space for the activator)."""

    qgraph_uri: str | None = None
    """The bundle's quantum graph, for an activator that runs quanta in another process."""

    local_repo: str | None = None
    """The workspace datastore's ``butler.yaml``, for the same."""

    transient: tuple[str, ...] = ()
    """Dataset types never written to disk (``execution.transient_dataset_types``)."""


@dataclasses.dataclass(frozen=True)
class ActivatorOutcome:
    """How a quantum that did not raise ended."""

    no_work: bool = False
    """The task found nothing to do (``NoWorkFound``); a success with a caveat."""

    already_done: bool = False
    """All outputs were already in the workspace (a resumed bundle)."""


class Activator(ABC):
    """Runs one quantum, reading inputs from and writing outputs through the bundle's butler.

    ``execute`` raises whatever the task raised if the quantum failed; the caller
    records the failure and blocks the quantum's descendants.
    """

    name: ClassVar[str]

    def __init__(self, context: ActivatorContext) -> None:
        self.context = context

    @classmethod  # noqa: B027 - optional hook
    def check_settings(cls, settings: Mapping[str, Any], labels: frozenset[str]) -> None:
        """Raise `ValueError` if ``settings`` cannot run the task ``labels`` (called when bundling)."""

    @abstractmethod
    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        """Run ``quantum`` of ``task_node``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held across quanta."""
