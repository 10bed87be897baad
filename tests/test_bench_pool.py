"""benchmarks/bench_pool.py in quick mode on sqlite: the exactly-once accounting holds and
every request kind was measured.  No timing is asserted (speed is measured in benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pilot.protocol import ClaimRequest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_pool_is_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "pool.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_pool.py"), "--store", "sqlite"]
    command += ["--pilots", "30", "--bundles", "60", "--heartbeat", "1", "--duration", "1", "2.5"]
    command += ["--ramp", "1", "--max-wait", "0.5", "--json", str(out)]
    if "claim_key" in ClaimRequest.model_fields:  # lost answers must then not leak bundles
        command += ["--lose-claim-responses", "0.2"]
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())["results"][0]
    assert result["problems"] == []
    counts = result["accounting"]
    assert counts["originals_handed_out"] == counts["bundle_ids_handed_out"] == 60
    assert counts["reports"] == counts["server_done"] == 60
    assert counts["leaked_leases"] == counts["remainders_claimed"] == 0
    for kind in ("claim", "heartbeat", "report"):
        assert result["requests"][kind]["n"] > 0, kind
    assert result["generator"]["timers"] > 0
    assert "| claim |" in run.stdout and "exactly once: OK" in run.stdout
