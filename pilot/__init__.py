"""quanta-pilot: an in-job executor for chained LSST Gen3 PipelineTasks."""

__version__ = "0.1.0"
