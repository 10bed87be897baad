"""``pilot bundle``: split a quantum graph into bundle files (central side)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import networkx
from lsst.daf.butler import Butler, ButlerConfig
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
from ..qgraph_io import require_graph_file
from .chains import BundlePlan, find_chains, iter_plans
from .dbb_init import initialize_output_run, open_dbb
from .exclusion import Excluded, excluded_quanta
from .graph_split import BundleGraphWriter, SplittableGraph, read_splittable_graph

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
    graph: SplittableGraph
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
    require_graph_file(graph_uri)
    graph = read_splittable_graph(graph_uri)
    if not graph.blocks:
        raise BundleError(f"quantum graph {graph_uri} has no quanta")
    header = graph.components.header
    xgraph = graph.xgraph
    butler = open_dbb(repo, writeable=True, run=header.output_run)
    repo_root = str(ButlerConfig(repo).configDir or repo)
    try:
        excluded = _drop_excluded(butler, xgraph, exclude or {}, graph_uri)
        initialize_output_run(butler, graph.init_components())
    finally:
        butler.close()
    dbb = DBBSpec(repo=repo_root, output_run=header.output_run, staging=staging)
    return PreparedGraph(graph_uri, graph, xgraph, excluded, dbb)


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

    Each bundle is written as soon as it is packed, so a scheduler watching ``out_dir``
    may start on the first while the rest are written.  Excluded quanta are listed in
    ``out_dir/excluded.jsonl``.  Returns the bundle files written, in dependency order.
    """
    if max_quanta is not None and max_quanta < 1:
        raise ConfigError(f"--max-quanta must be at least 1, not {max_quanta}")
    prepared = prepare_graph(qgraph, repo, staging=staging, exclude=exclude)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_excluded(out_dir, prepared.excluded)
    plans = iter_plans(find_chains(prepared.xgraph), prepared.xgraph, max_quanta)
    prefix = bundle_prefix(prepared.dbb.output_run)
    settings = BundleSettings(execution=execution or ExecutionSpec())
    return write_bundles(
        prepared, out_dir, ((f"{prefix}-b{index:05d}", plan, settings) for index, plan in enumerate(plans))
    )


def write_bundles(
    prepared: PreparedGraph, out_dir: Path, bundles: Iterable[tuple[str, BundlePlan, BundleSettings]]
) -> list[Path]:
    """Write ``<name>.qg`` then ``<name>.json`` for each ``(name, plan, settings)``, in order, as they come.

    A plan's ``depends_on`` indexes the bundles before it.  Both files appear whole
    (written under a temporary name, then renamed), the ``.qg`` first: a ``*.json``
    in ``out_dir`` is always a complete bundle whose graph is there.
    """
    writer = BundleGraphWriter(prepared.graph)
    names: list[str] = []
    written: list[Path] = []
    for name, plan, settings in bundles:
        writer.write(plan.quantum_ids, out_dir / f"{name}.qg")
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
        bundle_path = out_dir / f"{name}.json"
        write_bundle(bundle, ResourcePath(bundle_path))
        names.append(name)
        written.append(bundle_path)
    _LOG.info("Wrote %d bundles for %d quanta to %s.", len(written), len(prepared.xgraph), out_dir)
    return written


def _drop_excluded(
    butler: Butler, xgraph: networkx.DiGraph, exclude: Mapping[str, str], graph_uri: ResourcePath
) -> list[Excluded]:
    """Remove the quanta ``exclude`` matches and their descendants from ``xgraph``; return them.

    Raises
    ------
    BundleError
        Every quantum of the graph is excluded.
    """
    if not exclude:
        return []
    excluded = excluded_quanta(butler, xgraph, exclude)
    if len(excluded) == len(xgraph):
        raise BundleError(
            f"every one of the {len(xgraph)} quanta of {shown(graph_uri)} is excluded: nothing to bundle"
        )
    xgraph.remove_nodes_from(item.quantum_id for item in excluded)
    for label, count in sorted(Counter(item.task_label for item in excluded).items()):
        _LOG.info("Excluded %d quanta of %s.", count, label)
    return excluded


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
