"""BPS's final job for workflows of the pipe_base mock tasks: ``butler …`` after registering mocks.

``butler aggregate-graph`` reads the outputs' storage classes from the registry; the mock
ones (``_mock_<Original>``) exist in a process only once registered, which a real
campaign's final job never needs but a mock campaign's does.  Run it as BPS's
``finalJob`` command::

    finalJob:
      command1: >-
        python -m pilot.bps.final_job {finalPreCmdOpts} aggregate-graph
        {fileDistributionEndPoint}{qgraphFile} {butlerConfig} -j {requestCpus}
        --register-dataset-types {updateOutputChain} {extraAggregateOptions}

The arguments are ``butler``'s; the butler is the first argument after ``aggregate-graph``'s
graph.
"""

from __future__ import annotations

import sys

from lsst.daf.butler import Butler
from lsst.daf.butler.cli.butler import main

from ..central.mock_storage import register_mock_storage_classes


def _butler_config(argv: list[str]) -> str:
    """The repository argument of ``butler [global options] aggregate-graph GRAPH REPO …``."""
    positional = [a for a in argv[argv.index("aggregate-graph") + 1 :] if not a.startswith("-")]
    return positional[1]


def run(argv: list[str]) -> None:
    """Register the mock storage classes of the repository's dataset types, then run ``butler argv``.

    ``butler``'s command line exits the process with its status, as the ``butler`` script does.
    """
    with Butler.from_config(_butler_config(argv)) as butler:
        register_mock_storage_classes(t.storageClass_name for t in butler.registry.queryDatasetTypes())
    sys.argv = ["butler", *argv]
    main()


if __name__ == "__main__":
    run(sys.argv[1:])
