"""The pilot behind BPS: ``pilot run-qbb``, a drop-in for the ``pipetask run-qbb`` of BPS jobs."""
