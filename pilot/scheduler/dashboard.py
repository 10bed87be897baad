"""``/metrics`` and the operator's dashboard (``/dashboard``) of ``pilot serve``.

A browser logs in once: ``GET /dashboard/login`` is a form, whose ``POST`` carries the
bearer token in the request body.  The answer sets the cookie ``pilot_dashboard``
holding ``HMAC-SHA256(token, "pilot-dashboard-v1")`` (HttpOnly, SameSite=Strict,
Path=/dashboard, Secure over https), so neither the URL nor the browser's cookie store
holds the token itself.  The cookie opens ``/dashboard`` and its JSON feed
``/dashboard/data`` only; ``/metrics`` and ``/v1/`` take the bearer token alone.
Changing the token invalidates every cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import http
import json
import time
import urllib.parse
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any

import sqlalchemy as sa

from ..exit_codes import MEANINGS, ExitCode
from ..protocol import StatusResponse
from .metrics import CONTENT_TYPE, Metrics
from .service import Scheduler
from .tables import bundles

COOKIE = "pilot_dashboard"
_COOKIE_CONTEXT = b"pilot-dashboard-v1"
_MAX_FORM = 64 * 1024
_RECENT_FAILURES = 20

Answer = tuple[int, list[tuple[str, str]], bytes]


def reason(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


class WebViews:
    """Answers ``/metrics`` (bearer token) and ``/dashboard...`` (login cookie)."""

    def __init__(self, scheduler: Scheduler, token: str) -> None:
        self._scheduler = scheduler
        self._bearer = f"Bearer {token}".encode()
        self._cookie = hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest().encode()
        self.metrics = Metrics(scheduler)

    def answer(self, environ: dict[str, Any], route: str) -> Answer:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if route == "metrics":
            if not self._has_bearer(environ):
                return _text(401, "request with no or a wrong bearer token\n", [_BEARER_CHALLENGE])
            if method != "GET":
                return _text(405, "use GET\n")
            return 200, [("Content-Type", CONTENT_TYPE)], self.metrics.exposition()
        if path == "/dashboard/login":
            return self._login(environ, method)
        if path not in ("/dashboard", "/dashboard/", "/dashboard/data"):
            return _text(404, f"no such page: {path}\n")
        if method != "GET":
            return _text(405, "use GET\n")
        if not (self._has_cookie(environ) or self._has_bearer(environ)):
            if path == "/dashboard/data":
                return _json(401, {"error": "not logged in: open /dashboard/login"})
            return 303, [("Location", "/dashboard/login"), ("Content-Length", "0")], b""
        if path == "/dashboard/data":
            return _json(200, dashboard_data(self._scheduler))
        page = resources.files("pilot.scheduler").joinpath("dashboard.html").read_bytes()
        return 200, [("Content-Type", "text/html; charset=utf-8"), *_NO_STORE], page

    def _login(self, environ: dict[str, Any], method: str) -> Answer:
        if method == "GET":
            return _login_page(200, "")
        if method != "POST":
            return _text(405, "use GET or POST\n")
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_FORM)
        except ValueError:
            length = 0
        form = urllib.parse.parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"))
        given = form.get("token", [""])[0].strip()
        if not hmac.compare_digest(f"Bearer {given}".encode(), self._bearer):
            return _login_page(401, "That is not the scheduler's token.")
        secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
        cookie = f"{COOKIE}={self._cookie.decode()}; Path=/dashboard; HttpOnly; SameSite=Strict{secure}"
        headers = [("Set-Cookie", cookie), ("Location", "/dashboard"), ("Content-Length", "0")]
        return 303, headers, b""

    def _has_bearer(self, environ: dict[str, Any]) -> bool:
        return hmac.compare_digest(environ.get("HTTP_AUTHORIZATION", "").encode(), self._bearer)

    def _has_cookie(self, environ: dict[str, Any]) -> bool:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(environ.get("HTTP_COOKIE", ""))
        except Exception:
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self._cookie)


_BEARER_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="pilot"')
_NO_STORE = [("Cache-Control", "no-store"), ("X-Frame-Options", "DENY")]


def _text(status: int, text: str, extra: list[tuple[str, str]] | None = None) -> Answer:
    return status, [("Content-Type", "text/plain; charset=utf-8"), *(extra or [])], text.encode()


def _json(status: int, doc: dict[str, Any]) -> Answer:
    return status, [("Content-Type", "application/json"), *_NO_STORE], json.dumps(doc).encode()


def _login_page(status: int, error: str) -> Answer:
    message = f'<p class="err">{html.escape(error)}</p>' if error else ""
    page = _LOGIN.replace("{message}", message).encode()
    return status, [("Content-Type", "text/html; charset=utf-8"), *_NO_STORE], page


_LOGIN = """<!doctype html><html><head><meta charset="utf-8"><title>pilot serve: log in</title>
<style>body{font:15px system-ui,sans-serif;margin:4em auto;max-width:26em}
input{font:inherit;width:100%;margin:.4em 0;padding:.3em}.err{color:#b00}</style></head>
<body><h1>pilot serve</h1><p>The dashboard needs the scheduler's bearer token once; the browser keeps
a cookie derived from it (not the token).</p>{message}
<form method="post" action="/dashboard/login"><input type="password" name="token" id="token"
autocomplete="current-password" placeholder="bearer token" autofocus>
<input type="submit" id="login" value="Log in"></form></body></html>
"""


def dashboard_data(scheduler: Scheduler) -> dict[str, Any]:
    """The dashboard's JSON feed: ``/v1/status`` plus quanta, job progress and recent failures."""
    status: StatusResponse = scheduler.status()
    b = bundles
    with scheduler.store.connect() as conn:
        totals = scheduler.store.bundle_totals(conn)
        per_label = scheduler.store.job_quanta(conn)
        held = [p.bundle_id for p in status.pilots if p.bundle_id]
        sizes = dict(
            conn.execute(sa.select(b.c.bundle_id, b.c.n_quanta).where(b.c.bundle_id.in_(held))).all()
        )
        failures = conn.execute(
            sa.select(b.c.bundle_id, b.c.label, b.c.exit_code, b.c.failed_quanta, b.c.finished_at)
            .where(b.c.state == "failed")
            .order_by(b.c.finished_at.desc())
            .limit(_RECENT_FAILURES)
        ).all()
    jobs: dict[str, dict[str, int]] = {}
    for label, state, n_quanta in per_label:
        jobs.setdefault(label or "(no label)", {})[state] = n_quanta
    doc = status.model_dump(mode="json")
    for pilot in doc["pilots"]:
        pilot["bundle_quanta"] = sizes.get(pilot["bundle_id"]) if pilot["bundle_id"] else None
    doc.update(
        now=time.time(),
        quanta={state: totals.get(state, (0, 0))[1] for state in status.bundles},
        jobs=jobs,
        failures=[_failure(row) for row in failures],
    )
    return doc


def _failure(row: sa.Row) -> dict[str, Any]:
    code = row.exit_code
    try:
        message = MEANINGS.get(ExitCode(code), "") if code is not None else "lease lapsed or abandoned"
    except ValueError:
        message = f"exit code {code}"
    return {
        "bundle_id": row.bundle_id,
        "label": row.label,
        "exit_code": code,
        "failed_quanta": row.failed_quanta,
        "finished_at": row.finished_at,
        "message": message,
    }
