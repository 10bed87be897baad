"""The stack's provenance quantum graph of a run the pilot executed, and the pilot's extras beside it.

Once every quantum of a run's predicted graph (the bundles' ``source_qgraph``) has
ended in a bundle that ``pilot ingest`` registered, `lsst.pipe.base`'s own aggregator
(``butler aggregate-graph``) scans the run's metadata and logs in the DBB and writes
the stack's `ProvenanceQuantumGraph`.  It registers nothing (``dry_run``): the pilot's
ingest already did, and stays the only writer of the run.  Under ``<repo>/pilot-provenance/``::

    <output_run>.qg                     the provenance quantum graph (ProvenanceQuantumGraphReader,
                                        ``butler provenance-report``)
    <output_run>.pilot-extras.json      per quantum ID: each pilot run of it (host, site, worker,
                                        bundle, staging attempt, wall, CPU, peak RSS)

The graph has no place for the pilot's facts, so they are in the linked record, which
names the graph's ``provenance_dataset_id`` and the bundle attempts both were built
from.  Both are rewritten when a later ingest (a remainder, a retry) changes that set,
and left alone otherwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import pydantic
from lsst.resources import ResourcePath

from stagers.base import TransferError
from stagers.registry import stager_for

from ..errors import DBBError
from ..report import BundleReport, QuantumAttempt, QuantumResult, now
from ..staging import area
from ..staging.area import Manifest
from ..staging.provenance import Provenance

_LOG = logging.getLogger(__name__)

DEFAULT_DIR = "pilot-provenance/"
EXTRAS_SUFFIX = ".pilot-extras.json"
_ENDED = ("succeeded", "failed", "blocked")


class QuantumRun(pydantic.BaseModel):
    """One pilot run of a quantum, as its bundle's report and provenance record say."""

    bundle_id: str
    staging_attempt: str
    status: str
    host: str
    site: str | None
    worker: int | None
    processes: int
    started_at: datetime | None
    ended_at: datetime | None
    wall_seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    resumed: bool
    retried_attempts: list[QuantumAttempt] = pydantic.Field(
        default_factory=list,
        description="Failed attempts the pilot retried inside this run (in-job retries).",
    )


class QuantumExtras(pydantic.BaseModel):
    """The pilot's facts about one quantum of the graph."""

    task_label: str
    data_id: dict[str, int | str | None]
    attempts: int = pydantic.Field(description="Pilot runs of it that ended (not 'not_run').")
    runs: list[QuantumRun] = pydantic.Field(description="Oldest first; the last ended one is the graph's.")


class PilotExtras(pydantic.BaseModel):
    """The whole ``<output_run>.pilot-extras.json``."""

    extras_version: Literal[1] = 1
    output_run: str
    source_qgraph: str
    provenance_graph: str = pydantic.Field(description="File name of the graph, in this directory.")
    provenance_dataset_id: uuid.UUID = pydantic.Field(description="The graph header's provenance_dataset_id.")
    built_from: list[str] = pydantic.Field(description="'<bundle_id>/<attempt>' of each ingested bundle.")
    created_at: datetime
    aggregate_seconds: float
    quanta: dict[uuid.UUID, QuantumExtras]


@dataclasses.dataclass
class ProvenanceOutcome:
    """What ``update_provenance`` did for one output run."""

    output_run: str
    state: Literal["written", "up_to_date", "incomplete", "no_qgraph"]
    graph: ResourcePath | None = None
    missing: int = 0
    """Quanta of the predicted graph no ingested bundle ran to an end (``incomplete``)."""
    pending: int = 0
    """Committed bundles of the run not ingested yet (``incomplete``)."""
    seconds: float = 0.0

    def describe(self) -> str:
        match self.state:
            case "written":
                return f"{self.output_run}: provenance graph written in {self.seconds:.1f} s: {self.graph}"
            case "up_to_date":
                return f"{self.output_run}: provenance graph up to date: {self.graph}"
            case "no_qgraph":
                return f"{self.output_run}: no provenance graph: its bundles name no source quantum graph"
        waiting = (
            f"{self.missing} quanta not ended" if self.missing else f"{self.pending} bundles not ingested"
        )
        return f"{self.output_run}: no provenance graph yet ({waiting})"


@dataclasses.dataclass
class _Ingested:
    """A committed, ingested bundle attempt: its manifest, report and provenance record."""

    manifest: Manifest
    report: BundleReport
    provenance: Provenance | None

    @property
    def key(self) -> str:
        return f"{self.manifest.bundle_id}/{self.manifest.attempt}"


@dataclasses.dataclass
class _RunBundles:
    ingested: list[_Ingested] = dataclasses.field(default_factory=list)
    pending: int = 0


def provenance_root(repo: str) -> ResourcePath:
    """``<repo>/pilot-provenance/``."""
    return ResourcePath(repo, forceDirectory=True).join(DEFAULT_DIR, forceDirectory=True)


def graph_uri(repo: str, output_run: str) -> ResourcePath:
    """Where the provenance graph of ``output_run`` is written."""
    return provenance_root(repo).join(f"{output_run}.qg")


def extras_uri(repo: str, output_run: str) -> ResourcePath:
    """Where the pilot's extras of ``output_run`` are written."""
    return provenance_root(repo).join(f"{output_run}{EXTRAS_SUFFIX}")


def read_extras(repo: str, output_run: str) -> PilotExtras | None:
    """The pilot's extras of ``output_run``, or `None` if none were written."""
    uri = extras_uri(repo, output_run)
    if not uri.exists():
        return None
    return PilotExtras.model_validate_json(uri.read())


def update_provenance(
    repo: str,
    staging: str | None = None,
    *,
    runs: Iterable[str] | None = None,
    qgraph: str | None = None,
    force: bool = False,
) -> list[ProvenanceOutcome]:
    """Write the provenance graph and extras of each complete run in the staging area (idempotent).

    ``runs`` limits it to those output runs; ``qgraph`` overrides the bundles'
    ``source_qgraph`` (one run only); ``force`` rewrites an up-to-date graph.
    """
    return update_provenance_in(repo, area.staging_root(repo, staging), runs=runs, qgraph=qgraph, force=force)


def update_provenance_in(
    repo: str,
    staging_root: ResourcePath,
    *,
    runs: Iterable[str] | None = None,
    qgraph: str | None = None,
    force: bool = False,
) -> list[ProvenanceOutcome]:
    """`update_provenance` over the staging area at ``staging_root``."""
    by_run = _ingested_by_run(staging_root)
    wanted = sorted(by_run) if runs is None else sorted(set(runs))
    if qgraph is not None and len(wanted) != 1:
        raise DBBError(f"--qgraph names one run's graph, but {len(wanted)} runs were asked for: {wanted}")
    return [_update_run(repo, run, by_run.get(run, _RunBundles()), qgraph, force) for run in wanted]


def _ingested_by_run(root: ResourcePath) -> dict[str, _RunBundles]:
    by_run: dict[str, _RunBundles] = defaultdict(_RunBundles)
    try:
        for directory, manifest in area.committed_bundles(root):
            done = area.ingested_manifest(directory)
            if done is None or done.attempt != manifest.attempt:
                by_run[manifest.output_run].pending += 1
                continue
            stager = stager_for(directory)
            report = BundleReport.model_validate_json(stager.read(directory.join(manifest.report)))
            provenance = None
            if manifest.provenance is not None:
                provenance = Provenance.model_validate_json(stager.read(directory.join(manifest.provenance)))
            by_run[manifest.output_run].ingested.append(_Ingested(manifest, report, provenance))
    except (TransferError, pydantic.ValidationError) as err:
        raise DBBError(f"cannot read the staging area {root}: {err}") from None
    return by_run


def _update_run(
    repo: str, run: str, bundles: _RunBundles, qgraph: str | None, force: bool
) -> ProvenanceOutcome:
    graph = graph_uri(repo, run)
    built_from = sorted(item.key for item in bundles.ingested)
    if bundles.pending or not bundles.ingested:
        return ProvenanceOutcome(run, "incomplete", pending=bundles.pending)
    previous = read_extras(repo, run)
    if not force and previous is not None and previous.built_from == built_from and graph.exists():
        return ProvenanceOutcome(run, "up_to_date", graph)
    source = qgraph or _source_qgraph(bundles.ingested)
    if source is None:
        return ProvenanceOutcome(run, "no_qgraph")
    extras = _collect_extras(bundles.ingested)
    missing = _predicted_quanta(source) - {
        qid for qid, item in extras.items() if any(r.status in _ENDED for r in item.runs)
    }
    if missing:
        return ProvenanceOutcome(run, "incomplete", missing=len(missing))
    start = time.monotonic()
    dataset_id = _aggregate(source, repo, graph)
    seconds = time.monotonic() - start
    record = PilotExtras(
        output_run=run,
        source_qgraph=source,
        provenance_graph=graph.basename(),
        provenance_dataset_id=dataset_id,
        built_from=built_from,
        created_at=now(),
        aggregate_seconds=seconds,
        quanta=extras,
    )
    extras_uri(repo, run).write(record.model_dump_json(indent=1).encode(), overwrite=True)
    _LOG.info("Provenance graph of %s written in %.1f s: %s", run, seconds, graph)
    return ProvenanceOutcome(run, "written", graph, seconds=seconds)


def _source_qgraph(bundles: list[_Ingested]) -> str | None:
    sources = {item.provenance.source_qgraph for item in bundles if item.provenance is not None}
    sources.discard(None)
    if len(sources) > 1:
        raise DBBError(f"the bundles of run {bundles[0].manifest.output_run} name several graphs: {sources}")
    return sources.pop() if sources else None


def _collect_extras(bundles: list[_Ingested]) -> dict[uuid.UUID, QuantumExtras]:
    """Every pilot run of every quantum, oldest bundle first."""
    extras: dict[uuid.UUID, QuantumExtras] = {}
    for item in sorted(bundles, key=lambda b: (b.report.ended_at, b.manifest.bundle_id)):
        site = item.provenance.site if item.provenance is not None else None
        for result in item.report.quanta:
            entry = extras.setdefault(
                result.quantum_id,
                QuantumExtras(task_label=result.task_label, data_id=result.data_id, attempts=0, runs=[]),
            )
            entry.runs.append(_quantum_run(item, result, site))
            entry.attempts += result.status != "not_run"
    return extras


def _quantum_run(item: _Ingested, result: QuantumResult, site: str | None) -> QuantumRun:
    return QuantumRun(
        bundle_id=item.manifest.bundle_id,
        staging_attempt=item.manifest.attempt,
        status=result.status,
        host=item.report.host,
        site=site,
        worker=result.worker,
        processes=item.report.processes,
        started_at=result.started_at,
        ended_at=result.ended_at,
        wall_seconds=result.wall_seconds,
        cpu_seconds=result.cpu_seconds,
        max_rss_bytes=result.max_rss_bytes,
        resumed=result.resumed,
        retried_attempts=result.attempts,
    )


def _predicted_quanta(source: str) -> set[uuid.UUID]:
    from lsst.pipe.base.pipeline_graph import TaskImportMode
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraphReader

    try:
        with PredictedQuantumGraphReader.open(source, import_mode=TaskImportMode.DO_NOT_IMPORT) as reader:
            reader.read_thin_graph()
            quanta = itertools.chain.from_iterable(reader.components.thin_graph.quanta.values())
            return {quantum.quantum_id for quantum in quanta}
    except Exception as err:
        raise DBBError(
            f"cannot read the predicted quantum graph {source}: {type(err).__name__}: {err}"
        ) from None


def _aggregate(source: str, repo: str, graph: ResourcePath) -> uuid.UUID:
    """Run the stack's aggregator over the DBB; write the graph to ``graph``; return its dataset ID.

    The graph is written to a temporary file first (beside ``graph`` when local) and
    moved into place, so readers never see a partial graph.
    """
    from lsst.pipe.base.quantum_graph import ProvenanceQuantumGraphReader
    from lsst.pipe.base.quantum_graph.aggregator import AggregatorConfig, FatalWorkerError, aggregate_graph

    if graph.isLocal:
        graph.dirname().mkdir()
    scratch = graph.dirname().ospath if graph.isLocal else None
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".aggregate-") as tmp:
        written = ResourcePath(tmp, forceDirectory=True).join(graph.basename())
        config = AggregatorConfig(
            output_path=written.ospath,
            mock_storage_classes=True,
            dry_run=True,  # the pilot's ingest registered the outputs, metadata and logs
            defensive_ingest=True,
            register_dataset_types=False,
            update_output_chain=False,
        )
        try:
            aggregate_graph(source, repo, config)
            with ProvenanceQuantumGraphReader.open(written) as reader:
                dataset_id = reader.header.provenance_dataset_id
        except (FatalWorkerError, OSError, ValueError) as err:
            raise DBBError(f"aggregate-graph of {source} over {repo} failed: {err}") from None
        graph.transfer_from(written, transfer="move", overwrite=True)
    return dataset_id
