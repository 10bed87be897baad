"""The WSGI application: routes ``/v1/`` requests to the scheduler, JSON in and out.

Authentication comes first: a request without the right bearer token gets 401 before
its body is read, so it changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import pydantic

from ..protocol import (
    ClaimRequest,
    ClaimResponse,
    ErrorResponse,
    Heartbeat,
    Release,
    Report,
    WorkflowSubmit,
)
from .dashboard import WebViews, reason
from .errors import RequestError
from .metrics import route_of
from .service import Scheduler

_LOG = logging.getLogger(__name__)

_MAX_BODY = 16 * 1024 * 1024
_LEASE_PATH = re.compile(r"^/v1/leases/([0-9a-f]{32})/(heartbeat|report|release)$")
_WORKFLOW_PATH = re.compile(r"^/v1/workflows/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:/(cancel|restart))?$")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Content Too Large",
    500: "Internal Server Error",
}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class SchedulerApp:
    """WSGI callable serving ``scheduler`` to clients holding ``token``."""

    def __init__(self, scheduler: Scheduler, token: str) -> None:
        self._scheduler = scheduler
        self._token = f"Bearer {token}".encode()
        self.web = WebViews(scheduler, token)  # /metrics and /dashboard

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        route = route_of(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        answered: list[str] = ["500"]

        def respond(status: str, headers: list[tuple[str, str]]) -> Any:
            answered[0] = status.split(" ", 1)[0]
            return start_response(status, headers)

        try:
            if route in ("metrics", "dashboard"):
                code, extra, page = self.web.answer(environ, route)
                respond(reason(code), [*extra, ("Content-Length", str(len(page)))])
                return [page]
            return self._api(environ, respond)
        finally:
            self.web.metrics.observe(route, int(answered[0]), started)

    def _api(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status, body = self._dispatch(environ)
        payload = body.model_dump_json(exclude_none=isinstance(body, ClaimResponse)).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="pilot"'))
        start_response(f"{status} {_REASONS[status]}", headers)
        return [payload]

    def _dispatch(self, environ: dict[str, Any]) -> tuple[int, pydantic.BaseModel]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, self._token):
            what = "no bearer token" if not given else "a wrong bearer token"
            return 401, ErrorResponse(error=f"request with {what}")
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        scheduler = self._scheduler
        try:
            if path == "/v1/status":
                _expect(method, "GET")
                return 200, scheduler.status()
            if path == "/v1/report":
                _expect(method, "GET")
                return 200, scheduler.report()
            if path == "/v1/claim":
                _expect(method, "POST")
                return 200, scheduler.claim(_body(environ, ClaimRequest))
            if match := _LEASE_PATH.match(path):
                _expect(method, "POST")
                lease_id, action = match.groups()
                if action == "heartbeat":
                    return 200, scheduler.heartbeat(lease_id, _body(environ, Heartbeat))
                if action == "report":
                    return 200, scheduler.finish(lease_id, _body(environ, Report), "report")
                return 200, scheduler.finish(lease_id, _body(environ, Release), "release")
            if path == "/v1/workflows":
                if method == "POST":
                    return 200, scheduler.submit_workflow(_body(environ, WorkflowSubmit))
                _expect(method, "GET")
                return 200, scheduler.workflow_list()
            if match := _WORKFLOW_PATH.match(path):
                workflow_id, action = match.groups()
                if action is None:
                    _expect(method, "GET")
                    return 200, scheduler.workflow_status(workflow_id)
                _expect(method, "POST")
                if action == "cancel":
                    return 200, scheduler.cancel_workflow(workflow_id)
                return 200, scheduler.restart_workflow(workflow_id)
            return 404, ErrorResponse(error=f"no such endpoint: {path}")
        except RequestError as err:
            return err.status, ErrorResponse(error=str(err))
        except Exception as err:
            _LOG.exception("Error answering %s %s", method, path)
            return 500, ErrorResponse(error=f"{type(err).__name__}: {err}")


class _MethodNotAllowed(RequestError):
    status = 405


class _TooLarge(RequestError):
    status = 413


def _expect(method: str, wanted: str) -> None:
    if method != wanted:
        raise _MethodNotAllowed(f"use {wanted}")


def _body[M: pydantic.BaseModel](environ: dict[str, Any], model: type[M]) -> M:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise RequestError("bad Content-Length") from None
    if length > _MAX_BODY:
        raise _TooLarge(f"request body over {_MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        return model.model_validate(json.loads(raw or b"null"))
    except json.JSONDecodeError as err:
        raise RequestError(f"request body is not JSON: {err}") from None
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<body>"
        raise RequestError(f"{model.__name__}: field '{where}': {first['msg']}") from None
