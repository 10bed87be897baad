"""``/dashboard`` in a real headless Chromium: it logs in through the form, renders, updates.

Chromium is driven over the DevTools protocol (websocket-client): it loads the page, is
sent to the login form, submits the token there like an operator would, and shows the
dashboard with the login cookie.  Skipped only when no Chromium is installed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import TOKEN, serve, wait_for
from test_scheduler import SLOT, client, write_bundles

from pilot.protocol import Heartbeat, Report
from pilot.scheduler.dashboard import COOKIE

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (.ci/run installs it)")


class Browser:
    """A headless Chromium and one of its pages, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        import websocket  # test dependency: websocket-client

        assert CHROMIUM is not None
        command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        command += ["--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}"]
        command += ["--window-size=1280,1000", "about:blank"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"
        port = wait_for(lambda: active.exists() and active.read_text().split("\n")[0], "chromium's port")
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = next(p for p in pages if p["type"] == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events come in between; skip them
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        self._ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _campaign(url: str, quanta: dict[str, list[str]]) -> None:
    """One bundle done, one failed for good, one running with progress (pilot p2 idle)."""
    c = client(url)
    done = c.claim("p1", SLOT)
    assert done.lease is not None
    c.report(
        done.lease.lease_id,
        Report(status="succeeded", exit_code=0, succeeded_quantum_ids=quanta["a"], staged=False),
    )
    failed = c.claim("p2", SLOT)
    assert failed.lease is not None
    c.report(
        failed.lease.lease_id,
        Report(status="failed", exit_code=10, failed_quantum_ids=quanta["b"], staged=False),
    )
    running = c.claim("p1", SLOT)
    assert running.lease is not None
    c.heartbeat(running.lease.lease_id, Heartbeat(quanta_done=3, quanta_running=2, quanta_failed=1))


_NUMBERS = """JSON.stringify(Object.fromEntries(
  ["b-queued", "b-running", "b-done", "b-failed", "b-cancelled", "b-waiting", "i-pending", "i-done",
   "i-failed", "n-pilots"].map(id => [id, Number(document.getElementById(id).textContent)])))"""


def test_dashboard_in_chromium(tmp_path: Path) -> None:
    quanta = write_bundles(
        tmp_path / "bundles",
        {
            "a": {"n": 4},
            "b": {"n": 2, "retries": {"max_attempts": 1}},
            "c": {"n": 8},
            "d": {},
            "e": {"depends_on": ["d"]},
        },
    )
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        _campaign(url, quanta)
        assert requests.get(f"{url}/dashboard/data", timeout=30).status_code == 401
        browser = Browser(tmp_path / "profile")
        try:
            browser.call("Page.enable")
            browser.call("Page.navigate", url=f"{url}/dashboard")
            wait_for(lambda: browser.eval("location.pathname") == "/dashboard/login", "the login form")
            wait_for(lambda: browser.eval("document.readyState") == "complete", "the login form loaded")
            browser.eval(
                f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                "document.querySelector('form').submit()"
            )
            loaded = "location.pathname === '/dashboard' && document.body?.dataset.loaded === '1'"
            wait_for(lambda: browser.eval(loaded), "the dashboard's first update")
            assert browser.eval("document.cookie") == ""  # HttpOnly: no script sees it
            cookies = browser.call("Network.getCookies", urls=[f"{url}/dashboard"])["cookies"]
            [cookie] = [c for c in cookies if c["name"] == COOKIE]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
            status = client(url).status()
            shown = json.loads(browser.eval(_NUMBERS))
            expected = {f"b-{state}": n for state, n in status.bundles.items()}
            expected |= {f"i-{state}": n for state, n in status.ingest.items()}
            expected |= {"b-waiting": status.waiting, "n-pilots": len(status.pilots)}
            assert shown == expected
            assert (status.bundles["done"], status.bundles["failed"], status.bundles["running"]) == (1, 1, 1)
            pilots = browser.eval("document.getElementById('pilots').innerText")
            assert "3 / 2 / 1 of 8" in pilots and "idle" in pilots, pilots
            failures = browser.eval("document.getElementById('failures').innerText")
            assert "some quanta failed" in failures, failures
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        finally:
            browser.close()
    shot = tmp_path / "dashboard.png"
    shot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 600 and len(png) > 10_000, (width, height, len(png))
    if target := os.environ.get("PILOT_DASHBOARD_SCREENSHOT"):  # docs/dashboard.png is made so
        shutil.copyfile(shot, target)


def test_login_refuses_a_wrong_token(tmp_path: Path) -> None:
    write_bundles(tmp_path / "bundles", {"a": {}})
    with serve(tmp_path / "bundles", tmp_path / "dbb") as url:
        form = requests.get(f"{url}/dashboard/login", timeout=30)
        assert form.status_code == 200 and 'name="token"' in form.text
        page = requests.get(f"{url}/dashboard", allow_redirects=False, timeout=30)
        assert page.status_code == 303 and page.headers["Location"] == "/dashboard/login"
        wrong = requests.post(
            f"{url}/dashboard/login", data={"token": "wrong"}, allow_redirects=False, timeout=30
        )
        assert wrong.status_code == 401 and "Set-Cookie" not in wrong.headers
        forged = requests.get(f"{url}/dashboard/data", cookies={COOKIE: "0" * 64}, timeout=30)
        assert forged.status_code == 401
        right = requests.post(
            f"{url}/dashboard/login", data={"token": TOKEN}, allow_redirects=False, timeout=30
        )
        assert right.status_code == 303 and TOKEN not in right.headers["Set-Cookie"]
        data = requests.get(f"{url}/dashboard/data", cookies=right.cookies, timeout=30)
        assert data.status_code == 200 and data.json()["bundles"]["queued"] == 1
        # The cookie opens the dashboard only, not the API nor /metrics.
        assert requests.get(f"{url}/v1/status", cookies=right.cookies, timeout=30).status_code == 401
        assert requests.get(f"{url}/metrics", cookies=right.cookies, timeout=30).status_code == 401
