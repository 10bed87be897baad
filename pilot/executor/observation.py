"""The ``ObservationInfo`` of a quantum's raw-like inputs, read from their FITS headers in the worker.

A quantum's input is *raw-like* when its dataset type is an overall input of the pipeline
(no task of the graph writes it) and either has the ``exposure`` dimension or is named
``raw``: the exposures as they came from the instrument, not an intermediate such as a
post-ISR image (which has the ``exposure`` dimension too, but is made by a task).
Prerequisite inputs (calibrations) have no ``exposure`` dimension, so are not raw-like.

Each raw-like input's file in the workspace (where stage-in put it) is read with
astro_metadata_translator's own helper (the primary header, merged with the first
extension's when there is one) and translated by the translator the header names.  This
never fails the quantum (only a stop request, `InterruptedRun`, passes through): a file that
is not FITS (the mock tasks' JSON), a header that cannot be read, or one no translator
knows, is recorded as a note saying so.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lsst.daf.butler import DatasetRef, Quantum
from lsst.pipe.base.pipeline_graph import PipelineGraph
from lsst.resources import ResourcePath

from ..errors import InterruptedRun
from ..report import ObservationRecord, ObservedInput

RAW_NAME = "raw"
NO_RAW_INPUT = "no raw-like exposure input"
FITS_MAGIC = b"SIMPLE  ="
"""How every FITS file begins (the primary header's first card)."""


def raw_like_inputs(quantum: Quantum, pipeline_graph: PipelineGraph) -> list[DatasetRef]:
    """The quantum's raw-like inputs (see the module docstring), in the quantum's order."""
    found: list[DatasetRef] = []
    for dataset_type, refs in quantum.inputs.items():
        parent = dataset_type.nameAndComponent()[0]
        if pipeline_graph.producer_of(parent) is not None:
            continue
        if parent == RAW_NAME or "exposure" in dataset_type.dimensions.names:
            found.extend(refs)
    return found


def observe(
    quantum: Quantum, pipeline_graph: PipelineGraph, uri_of: Callable[[DatasetRef], ResourcePath]
) -> ObservationRecord:
    """Read and translate the header of each raw-like input; never raises."""
    refs = raw_like_inputs(quantum, pipeline_graph)
    if not refs:
        return ObservationRecord(note=NO_RAW_INPUT)
    return ObservationRecord(inputs=[observe_input(ref, uri_of) for ref in refs])


def observe_input(ref: DatasetRef, uri_of: Callable[[DatasetRef], ResourcePath]) -> ObservedInput:
    """The ``ObservationInfo`` of one input's file, or a note saying why there is none."""
    entry = ObservedInput(dataset_type=ref.datasetType.name, dataset_id=ref.id)
    failed = "input file not found"
    try:
        uri = uri_of(ref.makeCompositeRef() if ref.isComponent() else ref)
        if not uri.read(size=len(FITS_MAGIC)).startswith(FITS_MAGIC):
            entry.note = (
                f"input has no FITS header: {uri.basename()} (storage class "
                f"{ref.datasetType.storageClass_name}) is not a FITS file"
            )
            return entry
        # Imported here: only a worker that meets a FITS raw pays for the translators.
        from astro_metadata_translator import ObservationInfo
        from astro_metadata_translator.file_helpers import read_basic_metadata_from_file

        failed = f"FITS header of {uri.basename()} could not be read"
        header = read_basic_metadata_from_file(uri, -1, can_raise=True)
        if header is None:
            raise ValueError("no header returned")
        failed = f"FITS header of {uri.basename()} not translated"
        info = ObservationInfo(header, filename=str(uri), quiet=True)
        entry.info = json.loads(info.to_json())
        entry.datetime_begin = info.datetime_begin.utc.isot if info.datetime_begin is not None else None
        entry.datetime_end = info.datetime_end.utc.isot if info.datetime_end is not None else None
    except InterruptedRun:
        raise
    except Exception as err:
        entry.info = entry.datetime_begin = entry.datetime_end = None
        entry.note = f"{failed}: {type(err).__name__}: {err}"
    return entry
