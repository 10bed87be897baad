"""``pilot bundle``: split a quantum graph into bundle files (central side)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import networkx
from lsst.daf.butler import Butler, ButlerConfig
from lsst.pipe.base.quantum_graph import PredictedQuantumGraphComponents
from lsst.resources import ResourcePath

from ..bundle_model import (
    SCHEMA_VERSION,
    Bundle,
    DBBSpec,
    ExecutionSpec,
    ResourceEstimate,
    RetryPolicy,
    write_bundle,
)
from ..errors import BundleError, ConfigError, shown
from ..qgraph_io import read_full_graph, write_bundle_graph
from .chains import BundlePlan, find_chains, pack_chains
from .dbb_init import initialize_output_run, open_dbb
from .exclusion import Excluded, excluded_quanta

_LOG = logging.getLogger(__name__)

EXCLUDED_FILE = "excluded.jsonl"
"""The record of excluded quanta in the bundle directory: one JSON object a line.

Not ``*.json``: that pattern is the bundle files (``pilot serve`` queues every one).
"""


def bundle_prefix(output_run: str) -> str:
    """Return a path-safe bundle-name prefix derived from the output RUN collection."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", output_run).strip("_.-") or "run"


@dataclasses.dataclass
class PreparedGraph:
    """A quantum graph whose run is initialized in the DBB, exclusions taken out."""

    uri: ResourcePath
    components: PredictedQuantumGraphComponents
    xgraph: networkx.DiGraph  # quanta to run (excluded ones removed)
    excluded: list[Excluded]
    dbb: DBBSpec


@dataclasses.dataclass(frozen=True)
class BundleSettings:
    """What a bundle carries beyond its quanta (from ``pilot bundle``'s options, or a BPS job's)."""

    execution: ExecutionSpec = dataclasses.field(default_factory=ExecutionSpec)
    resources: ResourceEstimate = dataclasses.field(default_factory=ResourceEstimate)
    retries: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)


def prepare_graph(
    qgraph: str, repo: str, *, staging: str | None = None, exclude: Mapping[str, str] | None = None
) -> PreparedGraph:
    """Read ``qgraph``, drop the quanta ``exclude`` matches, and initialize its run in the DBB.

    ``exclude`` maps task labels to butler ``where`` expressions: the matching quanta
    of that task and everything downstream of them are left out (see
    `pilot.central.exclusion`).
    """
    graph_uri = ResourcePath(qgraph, forceAbsolute=True)
    components = read_full_graph(graph_uri)
    if not components.quantum_datasets:
        raise BundleError(f"quantum graph {graph_uri} has no quanta")
    header = components.header
    xgraph = components.assemble().quantum_only_xgraph
    butler = open_dbb(repo, writeable=True, run=header.output_run)
    repo_root = str(ButlerConfig(repo).configDir or repo)
    try:
        xgraph, excluded = _drop_excluded(butler, xgraph, exclude or {}, graph_uri)
        initialize_output_run(butler, components)
    finally:
        butler.close()
    dbb = DBBSpec(repo=repo_root, output_run=header.output_run, staging=staging)
    return PreparedGraph(graph_uri, components, xgraph, excluded, dbb)


def make_bundles(
    qgraph: str,
    repo: str,
    out_dir: Path,
    *,
    max_quanta: int | None = None,
    staging: str | None = None,
    execution: ExecutionSpec | None = None,
    exclude: Mapping[str, str] | None = None,
) -> list[Path]:
    """Prepare the DBB for ``qgraph`` and write one bundle (``.json`` + ``.qg``) per chain group.

    Excluded quanta are listed in ``out_dir/excluded.jsonl``.  Returns the bundle files
    written, in dependency order.
    """
    if max_quanta is not None and max_quanta < 1:
        raise ConfigError(f"--max-quanta must be at least 1, not {max_quanta}")
    prepared = prepare_graph(qgraph, repo, staging=staging, exclude=exclude)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_excluded(out_dir, prepared.excluded)
    plans = pack_chains(find_chains(prepared.xgraph), prepared.xgraph, max_quanta)
    prefix = bundle_prefix(prepared.dbb.output_run)
    names = [f"{prefix}-b{index:05d}" for index in range(len(plans))]
    settings = BundleSettings(execution=execution or ExecutionSpec())
    return write_bundles(
        prepared, out_dir, [(name, plan, settings) for name, plan in zip(names, plans, strict=True)]
    )


def write_bundles(
    prepared: PreparedGraph, out_dir: Path, bundles: list[tuple[str, BundlePlan, BundleSettings]]
) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.qg`` for each ``(name, plan, settings)``, in order.

    A plan's ``depends_on`` indexes this list.
    """
    names = [name for name, _, _ in bundles]
    written: list[Path] = []
    for name, plan, settings in bundles:
        bundle_path = out_dir / f"{name}.json"
        write_bundle_graph(prepared.components, plan.quantum_ids, ResourcePath(out_dir / f"{name}.qg"))
        bundle = Bundle(
            schema_version=SCHEMA_VERSION,
            bundle_id=name,
            qgraph=f"{name}.qg",
            quantum_ids=plan.quantum_ids,
            source_qgraph=str(prepared.uri),
            depends_on=[names[i] for i in sorted(plan.depends_on)],
            dbb=prepared.dbb,
            execution=settings.execution,
            resources=settings.resources,
            retries=settings.retries,
        )
        write_bundle(bundle, ResourcePath(bundle_path))
        written.append(bundle_path)
    _LOG.info("Wrote %d bundles for %d quanta to %s.", len(written), len(prepared.xgraph), out_dir)
    return written


def _drop_excluded(
    butler: Butler, xgraph: networkx.DiGraph, exclude: Mapping[str, str], graph_uri: ResourcePath
) -> tuple[networkx.DiGraph, list[Excluded]]:
    """Return ``xgraph`` without the quanta ``exclude`` matches and their descendants, and those quanta.

    Raises
    ------
    BundleError
        Every quantum of the graph is excluded.
    """
    if not exclude:
        return xgraph, []
    excluded = excluded_quanta(butler, xgraph, exclude)
    if len(excluded) == len(xgraph):
        raise BundleError(
            f"every one of the {len(xgraph)} quanta of {shown(graph_uri)} is excluded: nothing to bundle"
        )
    kept = networkx.DiGraph(xgraph)  # the assembled graph's view is frozen
    kept.remove_nodes_from(item.quantum_id for item in excluded)
    for label, count in sorted(Counter(item.task_label for item in excluded).items()):
        _LOG.info("Excluded %d quanta of %s.", count, label)
    return kept, excluded


def write_excluded(out_dir: Path, excluded: list[Excluded]) -> None:
    """Write ``out_dir/excluded.jsonl`` (one record a line), or remove a stale one if nothing is excluded."""
    path = out_dir / EXCLUDED_FILE
    if not excluded:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(json.dumps(item.to_record()) + "\n" for item in excluded))


def excluded_counts(out_dir: Path) -> dict[str, int]:
    """Return how many quanta of each task label ``out_dir/excluded.jsonl`` lists (empty: none)."""
    path = out_dir / EXCLUDED_FILE
    if not path.exists():
        return {}
    labels = Counter(json.loads(line)["task_label"] for line in path.read_text().splitlines() if line)
    return dict(sorted(labels.items()))
