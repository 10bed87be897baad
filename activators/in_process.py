"""Run quanta in the current process with pipe_base's `SingleQuantumExecutor`."""

from __future__ import annotations

import uuid
from typing import ClassVar

from lsst.daf.butler import Quantum
from lsst.pipe.base.pipeline_graph import TaskNode
from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

from .base import Activator, ActivatorContext, ActivatorOutcome


class InProcessActivator(Activator):
    """Executes each quantum with one `SingleQuantumExecutor` reused across the bundle.

    Task logs and metadata datasets are written by `SingleQuantumExecutor`, as
    ``pipetask run-qbb`` writes them.
    """

    name: ClassVar[str] = "in-process"

    def __init__(self, context: ActivatorContext) -> None:
        super().__init__(context)
        self._executor = SingleQuantumExecutor(
            butler=context.butler,
            # A rerun in the same workspace skips quanta whose outputs are all there;
            # in a fresh workspace the per-output existence checks are skipped.
            skip_existing=not context.fresh_workspace,
            assume_no_existing_outputs=context.fresh_workspace,
            clobber_outputs=True,
            raise_on_partial_outputs=context.raise_on_partial_outputs,
        )

    def execute(self, task_node: TaskNode, quantum: Quantum, quantum_id: uuid.UUID) -> ActivatorOutcome:
        result = self._executor.execute(task_node, quantum, quantum_id)
        return ActivatorOutcome(
            no_work=bool(result.adjusted_no_work), already_done=bool(result.skipped_existing)
        )
