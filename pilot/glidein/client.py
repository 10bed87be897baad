"""Client of the scheduler protocol (``docs/protocol.md``), used by ``pilot start`` and the BPS plugin."""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.parse
import uuid
from typing import Any, Literal

import pydantic
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import ConfigError, LeaseGone, SchedulerAuthError, SchedulerRejected, SchedulerUnreachable
from ..protocol import (
    CampaignReport,
    ClaimRequest,
    ClaimResponse,
    FinishResponse,
    Heartbeat,
    HeartbeatResponse,
    Release,
    Report,
    Slot,
    StatusResponse,
    WorkflowList,
    WorkflowStatus,
    WorkflowSubmit,
    read_token,
)

_LOG = logging.getLogger(__name__)

TOKEN_FILE_ENV = "PILOT_TOKEN_FILE"


def token_from(token_file: str | None) -> str:
    """Read the token from ``token_file``, else from the file named by ``$PILOT_TOKEN_FILE``."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if not path:
        raise ConfigError(f"no scheduler token: give --token-file or set {TOKEN_FILE_ENV}")
    return read_token(path)


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SchedulerClient:
    """Talk to the scheduler at ``url`` with bearer ``token``.

    Connection errors and 5xx answers are retried (``retries`` times, exponential
    backoff from ``backoff`` seconds); 401/403 never are.  Every request raises
    `SchedulerAuthError` on 401/403, `LeaseGone` on 404/410 for a lease,
    `SchedulerRejected` on any other 4xx and `SchedulerUnreachable` when retries
    run out.

    Raises
    ------
    ConfigError
        ``url`` is not an http(s) URL, or plain http to a host other than loopback
        (checked before any network I/O).
    """

    def __init__(
        self, url: str, token: str, *, retries: int = 5, backoff: float = 0.5, timeout: float = 30.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"scheduler URL {url!r} is not an http(s) URL")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ConfigError(
                f"scheduler URL {url!r}: refusing to send the token over plain http to {parts.hostname}; "
                "use https"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=None,  # POSTs too: a repeated report or keyed claim is idempotent
            raise_on_status=False,
        )
        self._session.mount("http://", HTTPAdapter(max_retries=retry))
        self._session.mount("https://", HTTPAdapter(max_retries=retry))

    def close(self) -> None:
        self._session.close()

    def claim(self, pilot_id: str, slot: Slot) -> ClaimResponse:
        """Ask for a bundle fitting ``slot``: the answer has bundle and lease, or ``no_work``.

        The claim carries a fresh key; the transport's retries resend the same body, so a
        claim whose answer was lost on the way gets the same bundle and lease again.
        """
        body = ClaimRequest(pilot_id=pilot_id, slot=slot, claim_key=uuid.uuid4().hex)
        return ClaimResponse.model_validate(self._call("POST", "/v1/claim", body))

    def heartbeat(self, lease_id: str, progress: Heartbeat) -> HeartbeatResponse:
        """Extend the lease; raises `LeaseGone` when the bundle is no longer this pilot's."""
        return HeartbeatResponse.model_validate(
            self._call("POST", f"/v1/leases/{lease_id}/heartbeat", progress)
        )

    def report(self, lease_id: str, report: Report) -> FinishResponse:
        """Send the bundle's final outcome (idempotent)."""
        return FinishResponse.model_validate(self._call("POST", f"/v1/leases/{lease_id}/report", report))

    def release(self, lease_id: str, release: Release) -> FinishResponse:
        """Give the bundle back while draining: its unfinished quanta are re-queued at once."""
        return FinishResponse.model_validate(self._call("POST", f"/v1/leases/{lease_id}/release", release))

    def status(self) -> StatusResponse:
        return StatusResponse.model_validate(self._call("GET", "/v1/status", None))

    def campaign_report(self) -> CampaignReport:
        return CampaignReport.model_validate(self._call("GET", "/v1/report", None))

    def submit_workflow(self, submit: WorkflowSubmit) -> WorkflowStatus:
        """Queue a workflow's bundles (idempotent)."""
        return WorkflowStatus.model_validate(self._call("POST", "/v1/workflows", submit))

    def workflows(self) -> WorkflowList:
        return WorkflowList.model_validate(self._call("GET", "/v1/workflows", None))

    def workflow(
        self, workflow_id: str, action: Literal["cancel", "restart"] | None = None
    ) -> WorkflowStatus:
        """A workflow's status, or cancel or restart it and get its status after."""
        path = f"/v1/workflows/{workflow_id}" + (f"/{action}" if action else "")
        return WorkflowStatus.model_validate(self._call("POST" if action else "GET", path, None))

    def _call(self, method: str, path: str, body: pydantic.BaseModel | None) -> Any:
        url = self.url + path
        data = None if body is None else body.model_dump_json().encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            response = self._session.request(method, url, data=data, headers=headers, timeout=self.timeout)
        except requests.RequestException as err:
            raise SchedulerUnreachable(f"scheduler {self.url} unreachable: {_short(err)}") from None
        if response.status_code == 200:
            return response.json()
        message = _error_text(response)
        if response.status_code in (401, 403):
            raise SchedulerAuthError(f"scheduler {self.url} refused the token: {message}")
        if response.status_code in (404, 410) and path.startswith("/v1/leases/"):
            raise LeaseGone(f"scheduler {self.url}: {message}")
        if response.status_code >= 500:
            raise SchedulerUnreachable(f"scheduler {self.url} kept failing: {response.status_code} {message}")
        raise SchedulerRejected(f"scheduler {self.url} rejected {method} {path}: {message}")


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code} {response.reason}"


def _short(err: Exception) -> str:
    """The innermost reason of a requests/urllib3 error, on one line."""
    reason: BaseException = err
    for _ in range(6):
        inner = getattr(reason, "reason", None)
        if not isinstance(inner, BaseException):
            inner = reason.__context__
        if inner is None or inner is reason:
            break
        reason = inner
    return f"{type(reason).__name__}: {reason}".splitlines()[0]
