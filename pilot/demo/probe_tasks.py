"""PipelineTasks that probe a slot: they sleep, allocate memory and write payloads of a set size.

Used by the benchmarks and tests, and usable by a site to check what a slot
sustains (and, with ``fail_count_file``, what retries do).  Each quantum reads one
``NumpyArray`` and writes one, per ``(instrument, detector)``; chain them by naming one
task's output as the next one's input (``config.connections.inputName`` /
``config.connections.outputName``).  `ExposurePayloadTask` does the same per
``(instrument, exposure, detector)``, and `FitsImageFormatter` reads a camera's raw FITS
file as its ``NumpyArray`` input (the primary HDU's image; ingest the raw with it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from lsst.daf.butler import FormatterV2
from lsst.pex.config import Field
from lsst.pipe.base import (
    InputQuantizedConnection,
    OutputQuantizedConnection,
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    QuantumContext,
    Struct,
)
from lsst.pipe.base import connectionTypes as cT
from lsst.resources import ResourcePath


class PayloadConnections(
    PipelineTaskConnections,
    dimensions=("instrument", "detector"),
    defaultTemplates={"inputName": "raw", "outputName": "payload"},
):
    input = cT.Input(
        doc="Array read from the previous task (or the raw).",
        name="{inputName}",
        storageClass="NumpyArray",
        dimensions=("instrument", "detector"),
    )
    output = cT.Output(
        doc="Array of payload_bytes bytes.",
        name="{outputName}",
        storageClass="NumpyArray",
        dimensions=("instrument", "detector"),
    )


class ExposurePayloadConnections(
    PipelineTaskConnections,
    dimensions=("instrument", "exposure", "detector"),
    defaultTemplates={"inputName": "raw", "outputName": "payload"},
):
    input = cT.Input(
        doc="Array read from the previous task (or the raw).",
        name="{inputName}",
        storageClass="NumpyArray",
        dimensions=("instrument", "exposure", "detector"),
    )
    output = cT.Output(
        doc="Array of payload_bytes bytes.",
        name="{outputName}",
        storageClass="NumpyArray",
        dimensions=("instrument", "exposure", "detector"),
    )


class PayloadConfig(PipelineTaskConfig, pipelineConnections=PayloadConnections):
    sleep = Field[float](doc="Seconds to sleep per quantum.", default=0.0)
    payload_bytes = Field[int](doc="Size of the output array in bytes.", default=8)
    allocate_bytes = Field[int](
        doc="Bytes to allocate and touch (held until the quantum ends), on top of the payload.", default=0
    )
    fail_count_file = Field[str](
        doc="File holding how many more times the quantum fails ('{detector}' is replaced by its "
        "detector); each failure counts it down. Empty, missing or 0: the quantum runs normally.",
        default="",
    )


class PayloadTask(PipelineTask):
    """Sleeps, touches ``allocate_bytes`` of memory, and writes ``payload_bytes`` derived from its input."""

    ConfigClass = PayloadConfig
    _DefaultName = "payload"
    config: PayloadConfig

    def runQuantum(
        self,
        butlerQC: QuantumContext,
        inputRefs: InputQuantizedConnection,
        outputRefs: OutputQuantizedConnection,
    ) -> None:
        data_id = butlerQC.quantum.dataId
        if self.config.fail_count_file and data_id is not None:
            self._count_down_failures(data_id["detector"])
        super().runQuantum(butlerQC, inputRefs, outputRefs)

    def _count_down_failures(self, detector: object) -> None:
        """Fail if the quantum's fail-count file says so, one fewer time each time."""
        path = Path(self.config.fail_count_file.format(detector=detector))
        try:
            left = int(path.read_text().strip() or 0)
        except FileNotFoundError:
            return
        if left > 0:
            path.write_text(f"{left - 1}\n")
            raise RuntimeError(f"failing as {path} says ({left - 1} more failures to come)")

    def run(self, input: np.ndarray) -> Struct:
        held = None
        if self.config.allocate_bytes > 0:
            held = np.ones(self.config.allocate_bytes, dtype=np.uint8)  # np.ones touches every page
        if self.config.sleep > 0:
            time.sleep(self.config.sleep)  # with the memory held, as a real task holds its images
        n = max(1, self.config.payload_bytes // 8)
        seed = float(input.flat[0]) if input.size else 0.0
        output = np.full(n, seed + 1.0, dtype=np.float64)
        del held
        return Struct(output=output)


class ExposurePayloadConfig(PayloadConfig, pipelineConnections=ExposurePayloadConnections):
    pass


class ExposurePayloadTask(PayloadTask):
    """`PayloadTask` with one quantum per ``(instrument, exposure, detector)``, as ISR has."""

    ConfigClass = ExposurePayloadConfig
    _DefaultName = "exposurePayload"


class FitsImageFormatter(FormatterV2):
    """Reads (and writes) the primary HDU's image of a FITS file as a ``NumpyArray``, with astropy."""

    supported_extensions = frozenset({".fits"})
    default_extension = ".fits"
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        from astropy.io import fits

        with fits.open(path) as hdus:
            return np.array(hdus[0].data)

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        from astropy.io import fits

        fits.PrimaryHDU(in_memory_dataset).writeto(uri.ospath)
