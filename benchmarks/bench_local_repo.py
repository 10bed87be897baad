#!/usr/bin/env python
"""What ``execution.local_repo: sqlite`` costs per bundle against the QBB path.

Builds the tests' 3-task mock chain (``tests/conftest.py`` ``make_campaign``) over
``--detectors`` detectors (3 x detectors quanta, one bundle), then for each mode:

* ``open``: the bundle session's construction in this process (graph load, quanta,
  and the butler: the QBB, or the temporary SQLite repo built and filled), ``--repeats``
  times, each closed (and its repo removed) before the next;
* ``run``: the whole ``pilot run --processes P`` as a subprocess (stage-out included),
  ``--repeats`` times, each in a fresh workspace with the DBB staging area emptied.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_local_repo.py --detectors 20``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import CHAIN3, make_campaign  # noqa: E402

from pilot.executor.bundle_session import BundleSession, SessionSpec  # noqa: E402


def _bundle(src: Path, mode: str) -> Path:
    document = json.loads(src.read_text())
    document["execution"]["local_repo"] = mode
    path = src.parent / f"{mode}.json"
    path.write_text(json.dumps(document))
    return path


def _open_seconds(bundle: Path, workspace: Path, mode: str) -> float:
    document = json.loads(bundle.read_text())
    spec = SessionSpec(
        key=document["bundle_id"],
        qgraph_uri=str(bundle.parent / document["qgraph"]),
        quantum_ids=tuple(uuid.UUID(q) for q in document["quantum_ids"]),
        local_repo=str(workspace / document["bundle_id"] / "repo" / "butler.yaml"),
        workspace=str(workspace / document["bundle_id"]),
        repo_mode=mode,
    )
    t0 = time.perf_counter()
    session = BundleSession(spec)
    seconds = time.perf_counter() - t0
    session.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-local-repo-"))
    camp = make_campaign(root, CHAIN3, n_detectors=args.detectors)
    pilot = [sys.executable, "-m", "pilot.cli"]
    subprocess.run(
        [*pilot, "bundle", camp.qgraph, "--repo", camp.repo, "--out", camp.bundles_dir], check=True
    )
    (original,) = camp.bundle_files()
    rows = []
    for mode in ("qbb", "sqlite"):
        bundle = _bundle(original, mode)
        runs, opens = [], []
        for i in range(args.repeats):
            shutil.rmtree(camp.staging, ignore_errors=True)
            workspace = root / f"ws-{mode}-{i}"
            t0 = time.perf_counter()
            subprocess.run(
                [*pilot, "run", "--processes", str(args.processes), bundle, "--workspace", workspace],
                check=True,
                capture_output=True,
            )
            runs.append(time.perf_counter() - t0)
            if i == 0:
                _open_seconds(bundle, workspace, mode)  # warm-up: first-use imports and caches
            opens.append(_open_seconds(bundle, workspace, mode))
        rows.append((mode, statistics.median(opens), min(opens), statistics.median(runs), min(runs)))
    print(f"{3 * args.detectors} quanta, {args.repeats} repeats, --processes {args.processes}")
    print("mode    open median  open min  run median  run min   (seconds)")
    for mode, open_med, open_min, run_med, run_min in rows:
        print(f"{mode:7} {open_med:11.3f} {open_min:9.3f} {run_med:11.2f} {run_min:8.2f}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
