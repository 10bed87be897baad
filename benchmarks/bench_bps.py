#!/usr/bin/env python
"""Whole-workflow wall time of a clustered ``bps submit``: ``pipetask run-qbb`` jobs vs ``pilot run-qbb``.

One invocation builds a DBB (demo instrument, ``--detectors`` detectors, the demo's mock
raws), writes the demo's 3-task pipeline (mock tasks sleeping ``--sleep`` s each) and two
submit YAMLs that differ only in ``runQuantumCommand``, then runs ``bps submit`` for each,
one after the other, on its own copy of the DBB: ctrl_bps_parsl on the loopback site
(``--cores`` jobs at a time), one job per detector (its chain of 3 quanta), BPS's final
job registering the outputs.  Each ``bps submit`` is timed from outside, whole: graph
generation, Parsl start-up, the jobs, the final job.  It checks that every quantum's
output was registered and prints a table with the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lsst.daf.butler import Butler

from pilot.bps.local_submit import MockTask, Submission, bps_submit, pipeline_yaml, submit_yaml
from pilot.demo.bps_demo import IN_COLLECTION, insert_raws
from pilot.demo.campaign import PIPELINE, create_dbb

WAYS = ("pipetask", "pilot")


def _time_submission(root: Path, repo: Path, pipeline: Path, way: str, cores: int) -> tuple[float, int]:
    work = root / way
    work.mkdir()
    copy = work / "dbb"
    shutil.copytree(repo, copy)
    submission = Submission(
        pipeline=str(pipeline),
        butler=str(copy),
        in_collection=IN_COLLECTION,
        output="bench",
        output_run="bench/run",
        labels=[label for label, _, _ in PIPELINE],
        submit_path=str(work / "submit"),
        cores=cores,
        job_command=way,
    )
    config = work / "bps-submit.yaml"
    config.write_text(submit_yaml(submission))
    start = time.perf_counter()
    result = bps_submit(config, cwd=work)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{way}: bps submit exited {result.returncode}:\n{result.stdout[-4000:]}")
    outputs = {output for _, _, output in PIPELINE}
    with Butler.from_config(str(copy)) as butler:
        refs = butler.query_all_datasets("bench/run", limit=None)
        n_outputs = sum(ref.datasetType.name in outputs for ref in refs)
    return wall, n_outputs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detectors", type=int, default=12, help="jobs (each a chain of 3 quanta)")
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each mock quantum sleeps")
    parser.add_argument("--cores", type=int, default=2, help="Parsl jobs at a time")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a tmp dir)")
    args = parser.parse_args()
    root = (args.keep or Path(tempfile.mkdtemp(prefix="bench-bps-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    repo = root / "dbb"
    create_dbb(repo, args.detectors)
    insert_raws(repo, args.sleep)
    pipeline = root / "pipeline.yaml"
    tasks = [MockTask(label, source, target, sleep=args.sleep) for label, source, target in PIPELINE]
    pipeline.write_text(pipeline_yaml(tasks, "bench_bps"))
    quanta = args.detectors * len(PIPELINE)
    results = {way: _time_submission(root, repo, pipeline, way, args.cores) for way in WAYS}
    print(
        f"{quanta} quanta ({args.detectors} jobs x {len(PIPELINE)}), sleep {args.sleep} s, {args.cores} cores"
    )
    print("| jobs run | bps submit wall s | outputs registered | x pipetask |")
    print("|---|---|---|---|")
    base = results["pipetask"][0]
    for way, (wall, n_outputs) in results.items():
        print(f"| `{way} run-qbb` | {wall:.1f} | {n_outputs}/{quanta} | {base / wall:.2f} |")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
