"""Make the pipe_base mocks' storage classes known to a process that never imported a mock task.

``pipetask --mock`` campaigns and ``lsst.pipe.base.tests.mocks`` pipelines use
dataset types whose storage classes (``_mock_<Original>``) are registered only when
a mock task's connections are built.  ``pilot ingest`` reads no pipeline, so it
registers them from the storage-class names it meets.
"""

from __future__ import annotations

from collections.abc import Iterable


def register_mock_storage_classes(storage_class_names: Iterable[str]) -> None:
    """Register every mock storage class among ``storage_class_names`` (idempotent)."""
    from lsst.pipe.base.tests.mocks import MockStorageClass, get_original_name, is_mock_name

    for name in storage_class_names:
        if is_mock_name(name):
            MockStorageClass.get_or_register_mock(get_original_name(name))
