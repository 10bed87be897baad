"""Cut small, standalone bundle graphs out of a full predicted quantum graph (``pilot bundle``).

The full graph is read once, without assembling a `PredictedQuantumGraph` (that builds
networkx graphs of every quantum and dataset: most of the time and memory of bundling a
large graph).  Each quantum's block of the ``quantum_datasets`` component is kept as the
compressed bytes in the file and only validated when its bundle is written, so memory
holds the thin graph, the dimension data and ~200 bytes a quantum.  Each bundle graph
carries only the dimension records its quanta's and datasets' data IDs need.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import networkx
from lsst.daf.butler import DataCoordinate, DimensionDataAttacher, DimensionGroup
from lsst.pipe.base.quantum_graph import (
    Decompressor,
    MultiblockReader,
    PredictedQuantumDatasetsModel,
    PredictedQuantumGraph,
    PredictedQuantumGraphComponents,
    PredictedQuantumGraphReader,
    PredictedThinGraphModel,
    PredictedThinQuantumModel,
)
from lsst.resources import ResourcePath

from ..errors import BundleError, shown

QUANTUM_DATASETS = "quantum_datasets"
"""The multi-block file of a ``.qg`` holding one block per quantum (pipe_base's name)."""


@dataclasses.dataclass
class SplittableGraph:
    """A full predicted graph read for splitting into bundle graphs.

    ``components`` has the header, pipeline graph, dimension data and init quanta; the
    thin graph is in ``xgraph`` instead (a quantum-only graph with the node attributes
    of `PredictedQuantumGraph.quantum_only_xgraph` that bundling uses: ``task_label``,
    ``data_id``), and ``blocks`` holds each quantum's compressed ``quantum_datasets``
    block, as in the file.
    """

    uri: ResourcePath
    components: PredictedQuantumGraphComponents
    xgraph: networkx.DiGraph
    blocks: dict[uuid.UUID, bytes]
    decompressor: Decompressor

    def init_components(self) -> PredictedQuantumGraphComponents:
        """The graph's components without quanta: all that initializing the output run needs.

        The init quanta are shared, not copied: records attached to them go into every bundle.
        """
        full = self.components
        return PredictedQuantumGraphComponents(
            header=full.header.model_copy(),
            pipeline_graph=full.pipeline_graph,
            dimension_data=full.dimension_data,
            init_quanta=full.init_quanta,
        )

    def quantum_datasets(
        self, quantum_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, PredictedQuantumDatasetsModel]:
        """Validate the blocks of ``quantum_ids``."""
        validate = PredictedQuantumDatasetsModel.model_validate_json
        return {qid: validate(self.decompressor.decompress(self.blocks[qid])) for qid in quantum_ids}


def read_splittable_graph(uri: ResourcePath) -> SplittableGraph:
    """Read the graph at ``uri`` for splitting (see `SplittableGraph`).

    Raises
    ------
    BundleError
        The file is not a readable predicted quantum graph.
    """
    try:
        with PredictedQuantumGraph.open(uri) as reader:
            reader.read_thin_graph()
            xgraph = _quantum_xgraph(reader.components)
            # The thin graph's pydantic models are the largest thing held (~1 kB a
            # quantum); the bundle graphs' thin graphs are rebuilt from ``xgraph``.
            reader.components.thin_graph = PredictedThinGraphModel()
            reader.read_init_quanta()
            reader.read_dimension_data()
            blocks = _read_blocks(reader)
        return SplittableGraph(uri, reader.components, xgraph, blocks, reader.decompressor)
    except BundleError:
        raise
    except Exception as err:
        raise BundleError(f"cannot read quantum graph {shown(uri)}: {type(err).__name__}: {err}") from None


def _quantum_xgraph(components: PredictedQuantumGraphComponents) -> networkx.DiGraph:
    """The quantum-only graph of the thin graph of ``components``."""
    xgraph = networkx.DiGraph()
    tasks = components.pipeline_graph.tasks
    for label, thin_quanta in components.thin_graph.quanta.items():
        dimensions = tasks[label].dimensions
        xgraph.add_nodes_from(
            (
                thin.quantum_id,
                {
                    "task_label": label,
                    "data_id": DataCoordinate.from_full_values(dimensions, tuple(thin.data_coordinate)),
                },
            )
            for thin in thin_quanta
        )
    xgraph.add_edges_from(components.thin_graph.edges)
    return xgraph


def _read_blocks(reader: PredictedQuantumGraphReader) -> dict[uuid.UUID, bytes]:
    """Each quantum's compressed block, read in one sequential pass.

    A sequential pass, not a lookup per quantum: seeking inside the zip member dies
    with ``EOFError`` on CPython 3.12.1 (gh-127847; see `pilot.qgraph_io`).  Blocks are
    matched to quanta by their offsets in the address file.
    """
    int_size = reader.header.int_size
    by_offset = {
        row.addresses[0].offset: quantum_id
        for quantum_id, row in reader.address_reader.read_all().items()
        if row.addresses and row.addresses[0].size
    }
    blocks: dict[uuid.UUID, bytes] = {}
    offset = 0
    for block in MultiblockReader.read_all_bytes_in_zip(
        reader.zf, QUANTUM_DATASETS, int_size=int_size, page_size=reader.page_size
    ):
        blocks[by_offset[offset]] = block
        offset += int_size + len(block)
    if len(blocks) != reader.header.n_quanta:
        raise BundleError(f"{len(blocks)} quantum blocks for the header's {reader.header.n_quanta} quanta")
    return blocks


class BundleGraphWriter:
    """Writes the bundle graphs of one `SplittableGraph`."""

    def __init__(self, graph: SplittableGraph) -> None:
        self.graph = graph
        pipeline_graph = graph.components.pipeline_graph
        self._task_dimensions = {label: task.dimensions for label, task in pipeline_graph.tasks.items()}
        self._dataset_dimensions = {
            name: node.dimensions for name, node in pipeline_graph.dataset_types.items()
        }
        self._all_dimensions = DimensionGroup.union(
            *pipeline_graph.group_by_dimensions(prerequisites=True).keys(), universe=pipeline_graph.universe
        )

    def write(self, quantum_ids: Sequence[uuid.UUID], path: Path) -> None:
        """Write a standalone ``.qg`` of ``quantum_ids`` to ``path``, atomically (temp file, rename)."""
        full = self.graph.components
        quantum_datasets = self.graph.quantum_datasets(quantum_ids)
        subset = PredictedQuantumGraphComponents(
            header=full.header.model_copy(deep=True),
            pipeline_graph=full.pipeline_graph,
            dimension_data=self._dimension_data(quantum_datasets.values()),
            init_quanta=full.init_quanta,
            thin_graph=self._thin_graph(quantum_ids),
            quantum_datasets=quantum_datasets,
        )
        subset.set_header_counts()
        # ``.qg`` is the extension the writer insists on; the leading dot keeps the
        # partial file out of ``*.qg`` globs.
        partial = path.with_name(f".{path.stem}.partial.qg")
        subset.write(str(partial))
        os.replace(partial, path)

    def _thin_graph(self, quantum_ids: Sequence[uuid.UUID]) -> PredictedThinGraphModel:
        """The full thin graph cut down to ``quantum_ids`` (what ``set_thin_graph`` would compute)."""
        xgraph = self.graph.xgraph
        wanted = set(quantum_ids)
        quanta: dict[str, list[PredictedThinQuantumModel]] = {label: [] for label in self._task_dimensions}
        edges: list[tuple[uuid.UUID, uuid.UUID]] = []
        for quantum_id in quantum_ids:
            node = xgraph.nodes[quantum_id]
            quanta[node["task_label"]].append(
                PredictedThinQuantumModel.model_construct(
                    quantum_id=quantum_id, data_coordinate=list(node["data_id"].full_values)
                )
            )
            edges.extend((quantum_id, succ) for succ in xgraph.successors(quantum_id) if succ in wanted)
        return PredictedThinGraphModel.model_construct(quanta=quanta, edges=edges)

    def _dimension_data(self, quanta: Iterable[PredictedQuantumDatasetsModel]) -> DimensionDataAttacher:
        """The dimension records that the data IDs of ``quanta`` and of their datasets need.

        A fresh attacher over the full graph's (lazy) deserializers looks them up, so only
        these records are deserialized and nothing accumulates across bundles.
        """
        values: defaultdict[DimensionGroup, set[tuple]] = defaultdict(set)
        for quantum in quanta:
            values[self._task_dimensions[quantum.task_label]].add(tuple(quantum.data_coordinate))
            for dataset in itertools.chain.from_iterable(
                itertools.chain(quantum.inputs.values(), quantum.outputs.values())
            ):
                values[self._dataset_dimensions[dataset.dataset_type_name]].add(
                    tuple(dataset.data_coordinate)
                )
        full = self.graph.components.dimension_data
        assert full is not None, "read_splittable_graph reads the dimension data"
        lookup = DimensionDataAttacher(
            deserializers=full.deserializers.values(), dimensions=self._all_dimensions
        )
        for dimensions, data_coordinates in values.items():
            if dimensions:
                try:
                    lookup.attach(
                        dimensions, [DataCoordinate.from_full_values(dimensions, v) for v in data_coordinates]
                    )
                except LookupError as err:
                    raise BundleError(f"quantum graph {shown(self.graph.uri)}: {err}") from None
        return DimensionDataAttacher(records=lookup.records.values(), dimensions=self._all_dimensions)
