"""One bundle opened for execution: its graph, quanta, chaining butler and activator.

A session lives in a worker process (or, with ``--processes 0``, in the pilot
itself) from the bundle's first quantum to its last, so the stack's machinery
(graph, quantum-backed butler, task factory) is built once per bundle, not per
quantum.
"""

from __future__ import annotations

import cProfile
import dataclasses
import os
import resource
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from lsst.daf.butler import LimitedButler
from lsst.daf.butler.datastore.record_data import DatastoreRecordData
from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from activators.base import Activator, ActivatorContext
from activators.registry import activator_class

from ..errors import InterruptedRun
from ..qgraph_io import load_bundle_graph
from ..report import QuantumResult, now
from ..workspace import workspace_butler
from .chaining_butler import ChainingButler
from .observation import observe
from .sqlite_repo import SqliteRepoOutputs, build_sqlite_repo

PROFILE_ENV = "PILOT_PROFILE_DIR"
"""If set, each session profiles its quanta (cProfile) and writes the stats there on close."""


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """Everything a worker needs to open a bundle (picklable, small)."""

    key: str
    qgraph_uri: str
    quantum_ids: tuple[uuid.UUID, ...]
    local_repo: str
    activator: str = "in-process"
    activators_by_label: tuple[tuple[str, str], ...] = ()
    """``(task label, activator)`` for labels not run by ``activator``."""
    activator_settings: tuple[tuple[str, Any], ...] = ()
    """``(activator, its settings)`` from the bundle."""
    workspace: str | None = None
    raise_on_partial_outputs: bool = True
    transient: tuple[str, ...] = ()
    fresh_workspace: bool = False
    hash_outputs: bool = True
    """Hash each file the quanta write (blake2b, for provenance); ``staging.verify_checksums``."""
    quantum_timeout: float | None = None
    """Wall seconds a quantum may run (``execution.quantum_timeout_seconds``)."""
    hang_seconds: float | None = None
    """Seconds a stopped or stuck worker may make no CPU progress (``execution.hang_seconds``)."""
    repo_mode: str = "qbb"
    """``execution.local_repo``: ``qbb`` (quantum-backed butler) or ``sqlite`` (`sqlite_repo`)."""


def in_bundle_consumers(
    qg: PredictedQuantumGraph, quantum_ids: tuple[uuid.UUID, ...]
) -> dict[uuid.UUID, int]:
    """Count, per dataset produced by the bundle, the bundle's quanta that consume it."""
    members = set(quantum_ids)
    xgraph = qg.bipartite_xgraph
    counts: Counter[uuid.UUID] = Counter()
    for quantum_id in quantum_ids:
        for dataset_id in xgraph.successors(quantum_id):
            consumers = sum(1 for c in xgraph.successors(dataset_id) if c in members)
            if consumers:
                counts[dataset_id] = consumers
    return dict(counts)


class BundleSession:
    """Runs quanta of one bundle through an activator over a `ChainingButler` (or a `sqlite_repo`)."""

    def __init__(self, spec: SessionSpec, qg: PredictedQuantumGraph | None = None) -> None:
        self.spec = spec
        self.qg = qg if qg is not None else load_bundle_graph(ResourcePath(spec.qgraph_uri), spec.quantum_ids)
        self.quanta = self.qg.build_execution_quanta(spec.quantum_ids)
        outputs: set[uuid.UUID] = set()
        inputs: set[uuid.UUID] = set()
        records = []
        for quantum in self.quanta.values():
            outputs.update(ref.id for refs in quantum.outputs.values() for ref in refs)
            inputs.update(ref.id for refs in quantum.inputs.values() for ref in refs)
            inputs.update(ref.id for ref in quantum.initInputs.values())
            records.append(quantum.datastore_records)
        merged = DatastoreRecordData.merge_mappings(*records)
        self.butler: ChainingButler | SqliteRepoOutputs
        if spec.repo_mode == "sqlite":
            base = Path(spec.workspace or ResourcePath(spec.local_repo).dirname().ospath)
            repo_root = base / f"sqlite-repo-{os.getpid()}"
            direct = build_sqlite_repo(self.qg, self.quanta, spec.local_repo, repo_root, merged)
            self._uri_of = direct._datastore.getURI
            self.butler = SqliteRepoOutputs(direct, repo_root, hash_outputs=spec.hash_outputs)
            self._task_butler: LimitedButler = direct
        else:
            qbb = workspace_butler(self.qg, spec.local_repo, inputs=inputs, outputs=outputs, records=merged)
            self._uri_of = qbb._datastore.getURI
            self.butler = self._task_butler = ChainingButler(
                qbb,
                in_bundle_consumers(self.qg, spec.quantum_ids),
                spec.transient,
                hash_outputs=spec.hash_outputs,
            )
        self._by_label = dict(spec.activators_by_label)
        self._activators: dict[str, Activator] = {}
        # Off unless PILOT_PROFILE_DIR is set (benchmarks/README.md): a profile of this
        # session's quanta, written by `close` as <dir>/<bundle>-<pid>.prof.
        self._profile_dir = os.environ.get(PROFILE_ENV)
        self._profiler = cProfile.Profile() if self._profile_dir else None

    def blank_result(self, quantum_id: uuid.UUID) -> QuantumResult:
        """A `not_run` result naming the quantum."""
        node = self.qg.quantum_only_xgraph.nodes[quantum_id]
        return QuantumResult(
            quantum_id=quantum_id,
            task_label=node["task_label"],
            data_id=dict(node["data_id"].required),
            status="not_run",
        )

    def activator_for(self, task_label: str) -> Activator:
        """The activator of a task label, made on first use and kept for the bundle."""
        name = self._by_label.get(task_label, self.spec.activator)
        if (activator := self._activators.get(name)) is None:
            activator = self._activators[name] = activator_class(name)(
                ActivatorContext(
                    butler=self._task_butler,
                    raise_on_partial_outputs=self.spec.raise_on_partial_outputs,
                    fresh_workspace=self.spec.fresh_workspace,
                    settings=dict(self.spec.activator_settings).get(name, {}),
                    workspace=self.spec.workspace,
                    qgraph_uri=self.spec.qgraph_uri,
                    local_repo=self.spec.local_repo,
                    transient=self.spec.transient,
                )
            )
        return activator

    def forget_outputs(self, quantum_id: uuid.UUID) -> None:
        """Remove what an earlier, failed attempt of the quantum wrote (before it runs again)."""
        refs = [ref for refs in self.quanta[quantum_id].outputs.values() for ref in refs]
        stored = [ref for ref, exists in self.butler.stored_many(refs).items() if exists]
        if stored:
            self.butler.pruneDatasets(stored, disassociate=True, unstore=True, purge=True)

    def run(self, quantum_id: uuid.UUID, worker: int | None = None) -> QuantumResult:
        """Run one quantum; a task exception becomes a ``failed`` result, never an exception.

        `InterruptedRun` (from the pilot's signal handling) propagates.
        """
        result = self.blank_result(quantum_id)
        result.worker = worker
        task_node = self.qg.pipeline_graph.tasks[result.task_label]
        _reset_peak_rss()
        result.started_at = now()
        wall0 = time.perf_counter()
        cpu0 = _cpu_seconds()
        if self._profiler is not None:
            self._profiler.enable()
        if isinstance(self.butler, SqliteRepoOutputs):
            self.butler.expect(self.quanta[quantum_id])
        try:
            activator = self.activator_for(result.task_label)
            outcome = activator.execute(task_node, self.quanta[quantum_id], quantum_id)
        except InterruptedRun:
            raise
        except Exception as err:
            result.status = "failed"
            result.exception_type = f"{type(err).__module__}.{type(err).__qualname__}"
            result.exception_message = str(err)
            result.exit_code = int(getattr(err, "EXIT_CODE", 1))
        else:
            result.status = "succeeded"
            if outcome.no_work:
                result.caveat = "no work found"
            elif outcome.already_done:
                result.caveat = "outputs already in workspace"
        finally:
            if self._profiler is not None:
                self._profiler.disable()
            result.wall_seconds = time.perf_counter() - wall0
            result.cpu_seconds = _cpu_seconds() - cpu0
            result.max_rss_bytes = _peak_rss()
            result.ended_at = now()
        # After the timed part; reads headers only, and never raises (issue 12).
        result.observation = observe(self.quanta[quantum_id], self.qg.pipeline_graph, self._uri_of)
        return result

    def close(self) -> None:
        """Release the butler and activator (writing the profile, if one was asked for)."""
        if self._profiler is not None and self._profile_dir:
            os.makedirs(self._profile_dir, exist_ok=True)
            self._profiler.dump_stats(os.path.join(self._profile_dir, f"{self.spec.key}-{os.getpid()}.prof"))
        for activator in self._activators.values():
            activator.close()
        self.butler.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process, so
    # the peak read after a quantum is that quantum's own.
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
