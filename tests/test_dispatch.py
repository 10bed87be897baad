"""The depth-first dispatcher's policy, rule by rule, on small hand-built graphs.

Each test builds a `networkx.DiGraph` of quantum IDs, feeds the dispatcher the
events the engine would (``next_for`` when a worker is idle, ``succeeded`` /
``failed`` when its quantum ends) and checks which quantum each worker gets.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

import networkx
import pytest

from pilot.executor.dispatch import DepthFirstDispatcher, sticky_groups


def quanta(*names: str) -> dict[str, uuid.UUID]:
    """Stable, readable quantum IDs: one per name."""
    return {name: uuid.uuid5(uuid.NAMESPACE_OID, name) for name in names}


def graph(q: Mapping[str, uuid.UUID], edges: Iterable[str]) -> networkx.DiGraph:
    """A quantum graph over all of ``q`` with edges written as ``"parent>child"``."""
    xgraph = networkx.DiGraph()
    xgraph.add_nodes_from(q.values())
    for edge in edges:
        parent, child = edge.split(">")
        xgraph.add_edge(q[parent], q[child])
    return xgraph


def dispatcher(
    q: Mapping[str, uuid.UUID],
    edges: Iterable[str],
    order: str,
    sticky: Mapping[uuid.UUID, int] | None = None,
) -> DepthFirstDispatcher:
    """A dispatcher over ``edges``, with the topological ``order`` given as space-separated names."""
    xgraph = graph(q, edges)
    ordered = [q[name] for name in order.split()]
    position = {quantum_id: index for index, quantum_id in enumerate(ordered)}
    assert set(position) == set(q.values()), "the order names every quantum once"
    assert all(position[p] < position[c] for p, c in xgraph.edges), "the order is topological"
    return DepthFirstDispatcher(xgraph, ordered, sticky or {})


def names(q: Mapping[str, uuid.UUID], ids: Iterable[uuid.UUID | None]) -> list[str | None]:
    """Translate quantum IDs back to names (for readable assertions)."""
    by_id = {v: k for k, v in q.items()}
    return [None if i is None else by_id[i] for i in ids]


def take(d: DepthFirstDispatcher, q: Mapping[str, uuid.UUID], worker: int) -> str | None:
    """Name of the quantum ``worker`` is given next (or `None`)."""
    return names(q, [d.next_for(worker)])[0]


# -- sticky groups ---------------------------------------------------------------


def test_sticky_groups_are_the_components_linked_by_transient_edges() -> None:
    q = quanta("a", "b", "c", "d", "e", "f")
    xgraph = graph(q, ["a>b", "b>c", "d>e", "e>f"])
    groups = sticky_groups(xgraph, [(q["a"], q["b"]), (q["b"], q["c"]), (q["d"], q["e"])])
    assert groups[q["a"]] == groups[q["b"]] == groups[q["c"]]
    assert groups[q["d"]] == groups[q["e"]]
    assert groups[q["a"]] != groups[q["d"]]
    # f consumes only a persisted dataset: it may run anywhere.
    assert q["f"] not in groups
    assert sticky_groups(xgraph, []) == {}


# -- rule 1: pinned quanta --------------------------------------------------------


def test_pinned_quantum_goes_to_its_worker_before_any_other_preference() -> None:
    # p2 -> t passes a transient dataset (sticky group 0); p1 and p2 both feed the fan-in f.
    q = quanta("p1", "p2", "f", "t")
    d = dispatcher(q, ["p1>f", "p2>f", "p2>t"], "p1 p2 f t", sticky={q["p2"]: 0, q["t"]: 0})
    assert take(d, q, 0) == "p1"
    assert take(d, q, 0) == "p2"
    d.succeeded(q["p1"])
    d.succeeded(q["p2"])
    # f has two parents on worker 0, t only one, but t is pinned to worker 0: it comes first.
    assert take(d, q, 0) == "t"
    assert take(d, q, 0) == "f"


def test_pinned_quantum_is_never_given_to_another_worker() -> None:
    q = quanta("p", "t", "other")
    d = dispatcher(q, ["p>t"], "p t other", sticky={q["p"]: 7, q["t"]: 7})
    assert take(d, q, 0) == "p"
    d.succeeded(q["p"])
    assert take(d, q, 1) == "other"
    # Only t is ready, and it needs the transient dataset worker 0 holds in memory.
    assert d.has_ready()
    assert take(d, q, 1) is None
    assert take(d, q, 0) == "t"
    assert not d.has_ready()


def test_unstarted_group_member_waits_for_the_worker_that_took_its_group() -> None:
    # Two producers of transient inputs of one consumer: all three share a worker.
    q = quanta("p1", "p2", "c")
    group = {q["p1"]: 0, q["p2"]: 0, q["c"]: 0}
    d = dispatcher(q, ["p1>c", "p2>c"], "p1 p2 c", sticky=group)
    assert take(d, q, 0) == "p1"
    assert take(d, q, 1) is None  # p2 is ready but pinned to worker 0 now
    assert take(d, q, 0) == "p2"
    d.succeeded(q["p1"])
    d.succeeded(q["p2"])
    assert take(d, q, 1) is None
    assert take(d, q, 0) == "c"


# -- rule 2: next link of a chain, fan-ins ---------------------------------------------


def test_next_link_of_a_chain_goes_to_the_worker_that_ran_its_parent() -> None:
    q = quanta("a1", "a2", "a3", "b1", "b2", "b3")
    d = dispatcher(q, ["a1>a2", "a2>a3", "b1>b2", "b2>b3"], "a1 a2 a3 b1 b2 b3")
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) == "b1"
    d.succeeded(q["b1"])
    d.succeeded(q["a1"])
    # a2 comes first in topological order, but worker 1 ran b1: it continues its own chain.
    assert take(d, q, 1) == "b2"
    assert take(d, q, 0) == "a2"
    d.succeeded(q["a2"])
    d.succeeded(q["b2"])
    assert take(d, q, 1) == "b3"
    assert take(d, q, 0) == "a3"


def test_fan_in_is_preferred_by_the_worker_holding_most_of_its_inputs() -> None:
    # Worker 0 runs i1, i2 and x; f needs i1 and i2, n needs only x.  n comes first in order.
    q = quanta("x", "i1", "i2", "n", "f")
    d = dispatcher(q, ["x>n", "i1>f", "i2>f"], "x n i1 i2 f")
    assert [take(d, q, 0) for _ in range(3)] == ["x", "i1", "i2"]
    for name in ("x", "i1", "i2"):
        d.succeeded(q[name])
    assert take(d, q, 0) == "f"  # two of its inputs are in worker 0's memory
    assert take(d, q, 0) == "n"


def test_fan_in_follows_its_inputs_rather_than_topological_order() -> None:
    # f's inputs ran on worker 1; worker 0 ran x, whose child n is earlier in order than f.
    q = quanta("x", "n", "i1", "i2", "f")
    d = dispatcher(q, ["x>n", "i1>f", "i2>f"], "x n i1 i2 f")
    assert take(d, q, 0) == "x"
    assert take(d, q, 1) == "i1"
    assert take(d, q, 1) == "i2"
    for name in ("x", "i1", "i2"):
        d.succeeded(q[name])
    assert take(d, q, 1) == "f"
    assert take(d, q, 0) == "n"


def test_equal_affinity_is_broken_by_topological_order() -> None:
    q = quanta("a", "b", "c")
    d = dispatcher(q, ["a>b", "a>c"], "a c b")
    assert take(d, q, 0) == "a"
    d.succeeded(q["a"])
    assert take(d, q, 0) == "c"
    assert take(d, q, 0) == "b"


# -- rules 3 and 4: new chains, then work stealing ----------------------------------------


def test_idle_workers_start_new_chains_in_topological_order() -> None:
    q = quanta("a1", "a2", "b1", "b2", "c1")
    d = dispatcher(q, ["a1>a2", "b1>b2"], "a1 a2 b1 b2 c1")
    assert [take(d, q, w) for w in (0, 1, 2)] == ["a1", "b1", "c1"]
    assert take(d, q, 3) is None
    assert not d.has_ready()


def test_idle_worker_starts_a_new_chain_before_stealing_a_claimed_one() -> None:
    q = quanta("a1", "a2", "b1", "c1")
    d = dispatcher(q, ["a1>a2"], "a1 a2 b1 c1")
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) == "b1"
    d.succeeded(q["a1"])
    # a2 (claimed by worker 0, which holds its input) is earlier than c1, an unclaimed root.
    assert take(d, q, 2) == "c1"
    assert take(d, q, 0) == "a2"


def test_work_stealing_when_nothing_else_is_ready() -> None:
    q = quanta("a1", "a2", "a3", "b1")
    d = dispatcher(q, ["a1>a2", "a2>a3"], "a1 a2 a3 b1")
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) == "b1"
    d.succeeded(q["b1"])
    d.succeeded(q["a1"])
    # Worker 0 is still busy (say); worker 1 has nothing of its own and no new chain: it steals.
    assert take(d, q, 1) == "a2"
    assert take(d, q, 0) is None  # a2 is gone, not handed out twice
    d.succeeded(q["a2"])
    # The chain now continues on the thief, which holds a2's output.
    assert take(d, q, 1) == "a3"


def test_no_stealing_in_the_first_round_over_idle_workers() -> None:
    q = quanta("a1", "a2", "b1")
    d = dispatcher(q, ["a1>a2"], "a1 a2 b1")
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) == "b1"
    d.succeeded(q["b1"])
    d.succeeded(q["a1"])
    # Both workers are idle at once and worker 1 is served first (it finished last): in the
    # first round it leaves a2 to worker 0, which holds a1's output; stealing is round two.
    assert d.next_for(1, steal=False) is None
    assert d.next_for(0, steal=False) == q["a2"]


def test_stealing_takes_the_earliest_claimed_quantum() -> None:
    q = quanta("a", "a1", "a2", "b")
    d = dispatcher(q, ["a>a1", "a>a2"], "a a2 a1 b")
    assert take(d, q, 0) == "a"
    assert take(d, q, 1) == "b"
    d.succeeded(q["a"])
    assert take(d, q, 1) == "a2"
    assert take(d, q, 0) == "a1"


# -- failures, block(), drain() ---------------------------------------------------------


def test_failure_blocks_exactly_its_descendants() -> None:
    # a -> b -> c, a -> d; e is independent; f needs both b (blocked) and e (fine).
    q = quanta("a", "b", "c", "d", "e", "f", "g")
    d = dispatcher(q, ["a>b", "b>c", "a>d", "b>f", "e>f", "e>g"], "a b c d e f g")
    assert take(d, q, 0) == "a"
    assert take(d, q, 1) == "e"
    blocked = d.failed(q["a"])
    assert sorted(names(q, blocked)) == ["b", "c", "d", "f"]
    d.succeeded(q["e"])
    # f lost one parent for good: only g becomes ready, and nothing blocked ever does.
    assert take(d, q, 1) == "g"
    d.succeeded(q["g"])
    assert not d.has_ready()
    assert take(d, q, 0) is None and take(d, q, 1) is None
    assert d.drain() == []


def test_failure_reports_only_newly_blocked_descendants() -> None:
    # Two failing parents share a descendant: it is reported blocked once.
    q = quanta("a", "b", "c", "d")
    d = dispatcher(q, ["a>c", "b>c", "c>d"], "a b c d")
    assert take(d, q, 0) == "a"
    assert take(d, q, 1) == "b"
    assert sorted(names(q, d.failed(q["a"]))) == ["c", "d"]
    assert d.failed(q["b"]) == set()


def test_block_takes_out_only_the_named_quanta() -> None:
    q = quanta("a1", "a2", "a3", "b1")
    d = dispatcher(q, ["a1>a2", "a2>a3"], "a1 a2 a3 b1")
    d.block([q["b1"]])
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) is None  # b1 was ready but is blocked
    d.block([q["a2"]])
    d.succeeded(q["a1"])
    assert not d.has_ready()
    assert take(d, q, 0) is None
    # a3 was not blocked itself: it is reported as never taken, the blocked ones are not.
    assert names(q, d.drain()) == ["a3"]


def test_drain_returns_never_taken_quanta_in_order_and_stops_dispatching() -> None:
    q = quanta("a1", "a2", "b1", "b2", "c1")
    d = dispatcher(q, ["a1>a2", "b1>b2"], "a1 a2 b1 b2 c1")
    assert take(d, q, 0) == "a1"
    assert take(d, q, 1) == "b1"
    d.succeeded(q["a1"])
    assert d.has_ready()
    assert names(q, d.drain()) == ["a2", "b2", "c1"]
    assert not d.has_ready()
    assert take(d, q, 0) is None and take(d, q, 2) is None


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_every_quantum_runs_once_in_dependency_order(workers: int) -> None:
    # A diamond per chain plus a fan-in over all chains: all rules mixed, nothing lost.
    q = quanta(*(f"{c}{i}" for c in "abc" for i in range(4)), "z")
    edges = [f"{c}0>{c}1" for c in "abc"] + [f"{c}0>{c}2" for c in "abc"]
    edges += [f"{c}1>{c}3" for c in "abc"] + [f"{c}2>{c}3" for c in "abc"] + [f"{c}3>z" for c in "abc"]
    d = dispatcher(q, edges, " ".join([*(f"{c}{i}" for c in "abc" for i in range(4)), "z"]))
    xgraph = graph(q, edges)
    done: list[uuid.UUID] = []
    running: dict[int, uuid.UUID] = {}
    while True:
        for worker in range(workers):
            if worker not in running and (quantum_id := d.next_for(worker)) is not None:
                running[worker] = quantum_id
        if not running:
            break
        worker = min(running)  # the lowest-numbered busy worker finishes first
        quantum_id = running.pop(worker)
        assert all(p in done for p in xgraph.predecessors(quantum_id))
        done.append(quantum_id)
        d.succeeded(quantum_id)
    assert sorted(done) == sorted(q.values())
    assert d.drain() == []
