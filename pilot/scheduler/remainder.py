"""A remainder bundle: the quanta of a bundle that neither succeeded nor failed, re-queued."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from lsst.resources import ResourcePath

from ..bundle_model import Bundle, write_bundle
from ..slot import parse_size


def remainder_id(root: str, generation: int) -> str:
    """Name of the ``generation``-th remainder of the chain that started with bundle ``root``."""
    return f"{root}-r{generation}"


def make_remainder(
    parent: Bundle,
    parent_file: ResourcePath,
    bundle_id: str,
    unfinished: Collection[uuid.UUID],
    parent_staged: bool,
    memory_factor: float = 1.0,
) -> Bundle:
    """Return the bundle of ``parent``'s ``unfinished`` quanta.

    It reads the same quantum graph (as an absolute URI: the remainder's file lives
    elsewhere), DBB, execution and staging settings.  When the parent committed a
    stage-out, the parent joins ``depends_on``: the remainder's quanta then read the
    outputs of the parent's succeeded quanta from its committed zip, as any bundle
    downstream of a cut chain does (``pilot.staging.upstream_inputs``).
    """
    keep = set(unfinished)
    quantum_ids = [q for q in parent.quantum_ids if q in keep]
    depends_on = list(parent.depends_on)
    if parent_staged and parent.bundle_id not in depends_on:
        depends_on.append(parent.bundle_id)
    seconds = parent.resources.seconds
    memory = parent.resources.memory_mb
    resources = parent.resources.model_copy(
        update={
            "seconds": None if seconds is None else seconds * len(quantum_ids) / len(parent.quantum_ids),
            "memory_mb": None if memory is None else round(memory * memory_factor),
        }
    )
    execution = parent.execution
    if memory_factor != 1.0 and execution.memory_per_worker is not None:
        budget = parse_size(execution.memory_per_worker) * memory_factor
        execution = execution.model_copy(update={"memory_per_worker": f"{budget / 2**20:.0f}MiB"})
    return parent.model_copy(
        update={
            "bundle_id": bundle_id,
            "qgraph": str(parent.qgraph_uri(parent_file)),
            "quantum_ids": quantum_ids,
            "depends_on": depends_on,
            "resources": resources,
            "execution": execution,
        }
    )


def write_remainder(bundle: Bundle, directory: ResourcePath) -> ResourcePath:
    """Write ``bundle`` as ``<directory>/<bundle_id>.json``; return the file's URI."""
    path = directory.join(f"{bundle.bundle_id}.json")
    write_bundle(bundle, path)
    return path
