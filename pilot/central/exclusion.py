"""Per-task data-ID exclusion: the quanta a butler ``where`` expression removes from a graph.

``{"calibrate": "detector IN (8, 9)"}`` excludes the ``calibrate`` quanta whose data
IDs match, and every quantum downstream of them.  The expression is evaluated by the
butler's own query system against the DBB registry, restricted to the task's quanta
(their data IDs are uploaded and joined), so it means exactly what it would mean in
``pipetask qgraph -d``.  It may name only the task's own dimensions (required or
implied) and their records' fields, e.g. ``detector.purpose``: a clause on any other
dimension (``exposure = 5`` for a detector-only task) would match a quantum through
unrelated rows, so it is refused with a `ConfigError` rather than guessed at.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping

import networkx
from lsst.daf.butler import Butler, DataCoordinate, DataIdValue, InvalidQueryError

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Excluded:
    """A quantum left out of the bundles, and why."""

    quantum_id: uuid.UUID
    task_label: str
    data_id: dict[str, DataIdValue]
    """The quantum's data ID (required dimensions), as plain values."""
    reason: str
    """``excluded by <label>: <expression>`` or ``downstream of excluded <label> <data ID>``."""

    def to_record(self) -> dict[str, object]:
        """Return this exclusion as a JSON-ready record."""
        return {
            "quantum_id": str(self.quantum_id),
            "task_label": self.task_label,
            "data_id": self.data_id,
            "reason": self.reason,
        }


def excluded_quanta(
    butler: Butler, xgraph: networkx.DiGraph, where_by_label: Mapping[str, str]
) -> list[Excluded]:
    """Return the quanta of ``xgraph`` that ``where_by_label`` excludes, in topological order.

    ``xgraph`` is a quantum-only graph (``PredictedQuantumGraph.quantum_only_xgraph``,
    nodes carrying ``task_label`` and ``data_id``); ``butler`` is the registry the
    graph was built from.  A quantum matched directly is reported as excluded by its
    expression; its descendants, as downstream of it.

    Raises
    ------
    ConfigError
        A label with no quanta in the graph, or an expression that is empty, does not
        parse, names an unknown dimension or field, or names a dimension outside the task's.
    """
    by_label: dict[str, list[uuid.UUID]] = defaultdict(list)
    for quantum_id, task_label in xgraph.nodes(data="task_label"):
        by_label[task_label].append(quantum_id)
    direct: dict[uuid.UUID, str] = {}
    for label, expression in where_by_label.items():
        if label not in by_label:
            raise ConfigError(f"cannot exclude quanta of task {label!r}: it has no quanta in the graph")
        data_ids = {quantum_id: xgraph.nodes[quantum_id]["data_id"] for quantum_id in by_label[label]}
        matched = _matching(butler, label, expression, data_ids.values())
        direct.update(
            (quantum_id, f"excluded by {label}: {expression}")
            for quantum_id, data_id in data_ids.items()
            if data_id in matched
        )
    reasons = dict(direct)
    order = list(networkx.lexicographical_topological_sort(xgraph, key=str))
    for quantum_id in order:  # ancestors first: a descendant names its first excluded ancestor
        if quantum_id in direct:
            node = xgraph.nodes[quantum_id]
            for descendant in networkx.descendants(xgraph, quantum_id):
                reasons.setdefault(
                    descendant, f"downstream of excluded {node['task_label']} {node['data_id']}"
                )
    return [
        _excluded(quantum_id, xgraph, reasons[quantum_id]) for quantum_id in order if quantum_id in reasons
    ]


def _matching(
    butler: Butler, label: str, expression: str, data_ids: Iterable[DataCoordinate]
) -> set[DataCoordinate]:
    """Return those of ``data_ids`` (one task's quanta) that ``expression`` matches."""
    if not expression.strip():
        raise ConfigError(f"the exclusion expression for task {label!r} is empty")
    # The query system wants governors (instrument, skymap) constrained by value: one query per set.
    by_governors: dict[tuple[tuple[str, DataIdValue], ...], list[DataCoordinate]] = defaultdict(list)
    for data_id in data_ids:
        by_governors[tuple((name, data_id[name]) for name in data_id.dimensions.governors)].append(data_id)
    matched: set[DataCoordinate] = set()
    for governors, group in by_governors.items():
        dimensions = group[0].dimensions
        try:
            with butler.query() as query:
                query = query.join_data_coordinates(group).where(expression, dict(governors))
                joined = query.constraint_dimensions
                if not joined.names <= dimensions.names:
                    foreign = sorted(joined.required - dimensions.names) or sorted(
                        joined.names - dimensions.names
                    )
                    raise ConfigError(
                        f"the exclusion expression for task {label!r} ({expression!r}) names dimensions "
                        f"{foreign} that its quanta {dimensions} do not have"
                    )
                matched.update(query.data_ids(dimensions))
        except InvalidQueryError as err:
            detail = err.__cause__ or err
            raise ConfigError(
                f"bad exclusion expression for task {label!r} ({expression!r}): {detail}"
            ) from None
    return matched


def _excluded(quantum_id: uuid.UUID, xgraph: networkx.DiGraph, reason: str) -> Excluded:
    node = xgraph.nodes[quantum_id]
    return Excluded(quantum_id, node["task_label"], dict(node["data_id"].required), reason)
