"""Imported only by the workers' forkserver: the stack it preloads, and deafness to stop signals.

A SIGTERM or Ctrl-C sent to the pilot's whole process group (as a batch system or
a terminal does) must not kill the forkserver: its workers' exit statuses travel
through it, and the pilot alone decides what a stop means (drain, grace, kill).

The imported stack is then frozen out of the garbage collector's reach (`gc.freeze`),
as the CPython documentation advises before forking: a worker's full collection
would otherwise walk (and, by updating their headers, copy) every object it shares
with the forkserver, ~0.1 s and a private copy of those pages per worker.
"""

import gc
import signal

import astro_metadata_translator  # noqa: F401 - workers translate raw headers (executor/observation)

import pilot.executor.bundle_session  # noqa: F401 - the point: import the LSST stack once, before forking

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
gc.freeze()  # last: everything imported above stays shared, and out of the workers' collections
