"""Split a quantum graph into chains and pack chains into bundles."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Iterator

import networkx


@dataclasses.dataclass
class BundlePlan:
    """The quanta of one bundle and the bundles it depends on (by index)."""

    quantum_ids: list[uuid.UUID]
    depends_on: set[int] = dataclasses.field(default_factory=set)


def find_chains(xgraph: networkx.DiGraph) -> list[list[uuid.UUID]]:
    """Return the chains of a quantum-only graph, each in topological order.

    A chain is a weakly connected component: a quantum together with all of its
    in-graph producers and consumers, transitively.  Chains are ordered by their
    first quantum's position in the graph's topological order, so the result is
    deterministic for a given graph.
    """
    position = {
        node: index for index, node in enumerate(networkx.lexicographical_topological_sort(xgraph, key=str))
    }
    chains = [
        sorted(component, key=position.__getitem__)
        for component in networkx.weakly_connected_components(xgraph)
    ]
    chains.sort(key=lambda chain: position[chain[0]])
    return chains


def iter_plans(
    chains: Iterable[list[uuid.UUID]], xgraph: networkx.DiGraph, max_quanta: int | None
) -> Iterator[BundlePlan]:
    """Pack whole chains into bundles of at most ``max_quanta`` quanta, yielding each as it is full.

    A chain larger than ``max_quanta`` is cut, in topological order, into bundles of
    its own; each such bundle records the bundles that produce its inputs.  A bundle's
    producers are always yielded before it (chains share no edges, and a cut chain's
    pieces follow its topological order), so its ``depends_on`` is known when it is.
    """
    owner: dict[uuid.UUID, int] = {}
    for index, quantum_ids in enumerate(_pieces(chains, max_quanta)):
        owner.update(dict.fromkeys(quantum_ids, index))
        plan = BundlePlan(quantum_ids)
        for quantum_id in quantum_ids:
            plan.depends_on.update(
                owner[producer] for producer in xgraph.predecessors(quantum_id) if owner[producer] != index
            )
        yield plan


def _pieces(chains: Iterable[list[uuid.UUID]], max_quanta: int | None) -> Iterator[list[uuid.UUID]]:
    """The quanta of each bundle: whole chains up to ``max_quanta``, larger chains cut."""
    current: list[uuid.UUID] = []
    for chain in chains:
        if max_quanta is None:
            current.extend(chain)
            continue
        if len(chain) > max_quanta:
            if current:
                yield current
                current = []
            yield from (chain[i : i + max_quanta] for i in range(0, len(chain), max_quanta))
            continue
        if len(current) + len(chain) > max_quanta:
            yield current
            current = []
        current.extend(chain)
    if current:
        yield current
