"""PipelineTasks that probe a slot: they sleep, allocate memory and write payloads of a set size.

Used by the benchmarks and tests, and usable by a site to check what a slot
sustains.  Each quantum reads one ``NumpyArray`` and writes one, per
``(instrument, detector)``; chain them by naming one task's output as the next
one's input (``config.connections.inputName`` / ``config.connections.outputName``).
"""

from __future__ import annotations

import time

import numpy as np
from lsst.pex.config import Field
from lsst.pipe.base import (
    PipelineTask,
    PipelineTaskConfig,
    PipelineTaskConnections,
    Struct,
)
from lsst.pipe.base import connectionTypes as cT


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


class PayloadConfig(PipelineTaskConfig, pipelineConnections=PayloadConnections):
    sleep = Field[float](doc="Seconds to sleep per quantum.", default=0.0)
    payload_bytes = Field[int](doc="Size of the output array in bytes.", default=8)
    allocate_bytes = Field[int](
        doc="Bytes to allocate and touch (held until the quantum ends), on top of the payload.", default=0
    )


class PayloadTask(PipelineTask):
    """Sleeps, touches ``allocate_bytes`` of memory, and writes ``payload_bytes`` derived from its input."""

    ConfigClass = PayloadConfig
    _DefaultName = "payload"
    config: PayloadConfig

    def run(self, input: np.ndarray) -> Struct:
        if self.config.sleep > 0:
            time.sleep(self.config.sleep)
        held = None
        if self.config.allocate_bytes > 0:
            held = np.ones(self.config.allocate_bytes, dtype=np.uint8)  # np.ones touches every page
        n = max(1, self.config.payload_bytes // 8)
        seed = float(input.flat[0]) if input.size else 0.0
        output = np.full(n, seed + 1.0, dtype=np.float64)
        del held
        return Struct(output=output)
