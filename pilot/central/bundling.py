"""``pilot bundle``: split a quantum graph into bundle files (central side)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from lsst.daf.butler import ButlerConfig
from lsst.resources import ResourcePath

from ..bundle_model import SCHEMA_VERSION, Bundle, DBBSpec, ExecutionSpec, write_bundle
from ..errors import BundleError, ConfigError
from ..qgraph_io import read_full_graph, write_bundle_graph
from .chains import find_chains, pack_chains
from .dbb_init import initialize_output_run, open_dbb

_LOG = logging.getLogger(__name__)


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
) -> list[Path]:
    """Prepare the DBB for ``qgraph`` and write one bundle (``.json`` + ``.qg``) per chain group.

    Returns the bundle files written, in dependency order.
    """
    if max_quanta is not None and max_quanta < 1:
        raise ConfigError(f"--max-quanta must be at least 1, not {max_quanta}")
    graph_uri = ResourcePath(qgraph, forceAbsolute=True)
    components = read_full_graph(graph_uri)
    if not components.quantum_datasets:
        raise BundleError(f"quantum graph {graph_uri} has no quanta")
    header = components.header
    butler = open_dbb(repo, writeable=True, run=header.output_run)
    repo_root = str(ButlerConfig(repo).configDir or repo)
    try:
        initialize_output_run(butler, components)
    finally:
        butler.close()
    xgraph = components.assemble().quantum_only_xgraph
    plans = pack_chains(find_chains(xgraph), xgraph, max_quanta)
    out_dir.mkdir(parents=True, exist_ok=True)
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
