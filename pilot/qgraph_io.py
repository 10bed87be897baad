"""Read quantum graphs (a bundle's own small graph is cut out by `pilot.central.graph_split`).

``pilot bundle`` writes each bundle's quanta to a ``.qg`` file of their own, so a job
fetches only what it runs and reads that file whole.  A partial read of a large
``.qg`` (``read_execution_quanta`` with quantum IDs) dies with ``EOFError`` on
CPython 3.12.1 (gh-127847, a ``zipfile`` seek bug fixed in later 3.12 releases);
reading whole files sidesteps it, and a partial read that hits it falls back to a
whole read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection

from lsst.pipe.base.quantum_graph import PredictedQuantumGraph
from lsst.resources import ResourcePath

from .errors import BundleError, shown

_LOG = logging.getLogger(__name__)


def load_bundle_graph(uri: ResourcePath, quantum_ids: Collection[uuid.UUID] | None) -> PredictedQuantumGraph:
    """Load what is needed to execute ``quantum_ids`` (`None`: all) from the graph at ``uri``.

    Raises
    ------
    BundleError
        The file is missing or unreadable, or a quantum ID is not in it.
    """
    require_graph_file(uri)
    try:
        with PredictedQuantumGraph.open(uri) as reader:
            reader.read_thin_graph()
            in_graph = {
                thin.quantum_id for quanta in reader.components.thin_graph.quanta.values() for thin in quanta
            }
            missing = [str(qid) for qid in quantum_ids or () if qid not in in_graph]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise BundleError(f"quantum ID {missing[0]}{more} is not in quantum graph {shown(uri)}")
            whole = quantum_ids is None or len(in_graph) == len(set(quantum_ids))
            try:
                reader.read_execution_quanta(None if whole else quantum_ids)
            except EOFError:
                _LOG.warning("Partial read of %s hit CPython gh-127847; reading the whole graph.", uri)
                reader.read_execution_quanta(None)
        return reader.finish()
    except BundleError:
        raise
    except Exception as err:
        raise BundleError(f"cannot read quantum graph {shown(uri)}: {type(err).__name__}: {err}") from None


def task_labels(uri: ResourcePath) -> dict[uuid.UUID, str]:
    """The task label of every quantum in the graph at ``uri`` (its thin graph only).

    Raises
    ------
    BundleError
        The file is missing or unreadable.
    """
    require_graph_file(uri)
    try:
        with PredictedQuantumGraph.open(uri) as reader:
            reader.read_thin_graph()
            quanta = reader.components.thin_graph.quanta
            return {thin.quantum_id: label for label, items in quanta.items() for thin in items}
    except Exception as err:
        raise BundleError(f"cannot read quantum graph {shown(uri)}: {type(err).__name__}: {err}") from None


def require_graph_file(uri: ResourcePath) -> None:
    """Raise `BundleError` unless ``uri`` is an existing ``.qg`` file."""
    if uri.getExtension() != ".qg":
        raise BundleError(f"quantum graph {shown(uri)} must be a '.qg' file")
    try:
        exists = uri.exists()
    except Exception as err:
        raise BundleError(f"cannot reach quantum graph {shown(uri)}: {err}") from None
    if not exists:
        raise BundleError(f"quantum graph file {shown(uri)} does not exist")
