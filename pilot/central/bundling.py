"""``pilot bundle``: split a quantum graph into bundle files (central side)."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import networkx
from lsst.daf.butler import Butler, ButlerConfig
from lsst.resources import ResourcePath

from ..bundle_model import SCHEMA_VERSION, Bundle, DBBSpec, ExecutionSpec, write_bundle
from ..errors import BundleError, ConfigError, shown
from ..qgraph_io import read_full_graph, write_bundle_graph
from .chains import find_chains, pack_chains
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

    ``exclude`` maps task labels to butler ``where`` expressions: the matching quanta
    of that task and everything downstream of them are left out of the bundles and
    listed in ``out_dir/excluded.jsonl`` (see `pilot.central.exclusion`).

    Returns the bundle files written, in dependency order.
    """
    if max_quanta is not None and max_quanta < 1:
        raise ConfigError(f"--max-quanta must be at least 1, not {max_quanta}")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    write_excluded(out_dir, excluded)
    plans = pack_chains(find_chains(xgraph), xgraph, max_quanta)
    prefix = bundle_prefix(header.output_run)
    names = [f"{prefix}-b{index:05d}" for index in range(len(plans))]
    written: list[Path] = []
    for name, plan in zip(names, plans, strict=True):
        bundle_path = out_dir / f"{name}.json"
        write_bundle_graph(components, plan.quantum_ids, ResourcePath(out_dir / f"{name}.qg"))
        bundle = Bundle(
            schema_version=SCHEMA_VERSION,
            bundle_id=name,
            qgraph=f"{name}.qg",
            quantum_ids=plan.quantum_ids,
            source_qgraph=str(graph_uri),
            depends_on=[names[i] for i in sorted(plan.depends_on)],
            dbb=DBBSpec(repo=repo_root, output_run=header.output_run, staging=staging),
            execution=execution or ExecutionSpec(),
        )
        write_bundle(bundle, ResourcePath(bundle_path))
        written.append(bundle_path)
    _LOG.info("Wrote %d bundles for %d quanta to %s.", len(written), len(xgraph), out_dir)
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
