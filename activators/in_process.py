"""Run quanta in the pilot's own process with pipe_base's `SingleQuantumExecutor`."""

from __future__ import annotations

import uuid
from typing import ClassVar

from lsst.daf.butler import LimitedButler, Quantum, QuantumBackedButler
from lsst.pipe.base.pipeline_graph import TaskNode
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from .base import Activator, ActivatorContext, ActivatorOutcome


class InProcessActivator(Activator):
    """Executes each quantum against a quantum-backed butler over the workspace datastore.

    Task logs and metadata datasets are written by `SingleQuantumExecutor`, exactly
    as ``pipetask run-qbb`` writes them.
    """

    name: ClassVar[str] = "in-process"

    def __init__(self, context: ActivatorContext) -> None:
        super().__init__(context)
        self._executor = SingleQuantumExecutor(
            limited_butler_factory=self._make_butler,
            skip_existing=True,
            clobber_outputs=True,
            raise_on_partial_outputs=context.raise_on_partial_outputs,
        )

    def _make_butler(self, quantum: Quantum) -> LimitedButler:
        return QuantumBackedButler.initialize(
            config=self.context.local_repo,
            quantum=quantum,
            dimensions=self.context.universe,
            dataset_types=self.context.dataset_types,
        )

    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        result = self._executor.execute(task_node, quantum, quantum_id)
        return ActivatorOutcome(
            no_work=bool(result.adjusted_no_work), already_done=bool(result.skipped_existing)
        )
