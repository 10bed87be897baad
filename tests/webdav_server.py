"""A real WebDAV server (wsgidav on cheroot) for the tests: ``python webdav_server.py ROOT PORT``.

Like the production doors (dCache, XRootD), it creates missing parent collections on
PUT; stock wsgidav answers 409 instead, which the butler's datastore does not expect.

Faults for the tests, from the environment:

- ``DAV_FAIL_PUTS=N``: answer 500 to the first N PUTs (counted in ``$DAV_STATE/failed_puts``);
- ``DAV_STALL_ZIP_PUT=1``: on a PUT of a ``.zip``, create ``$DAV_STATE/zip_put_started``
  and stall (a client killed meanwhile leaves a partial upload at most).

Like a production door, from the environment too:

- ``DAV_TLS_CERT`` / ``DAV_TLS_KEY``: serve HTTPS with this certificate and key;
- ``DAV_BEARER_TOKEN``: answer 401 to any request but OPTIONS without ``Authorization: Bearer <it>``.
"""

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from wsgidav.wsgidav_app import WsgiDAVApp


def create_parents_on_put(app: Callable[..., Iterable[bytes]], root: str) -> Callable[..., Iterable[bytes]]:
    """Wrap ``app`` so a PUT first creates the target's parent directories under ``root``."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "PUT":
            target = os.path.join(root, unquote(environ.get("PATH_INFO", "")).lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
        return app(environ, start_response)

    return wrapped


def inject_faults(app: Callable[..., Iterable[bytes]], state: str) -> Callable[..., Iterable[bytes]]:
    """Wrap ``app`` with the faults the environment asks for (see the module docstring)."""
    fail_puts = int(os.environ.get("DAV_FAIL_PUTS", "0"))
    stall_zip = bool(os.environ.get("DAV_STALL_ZIP_PUT"))
    lock = threading.Lock()
    failed = [0]

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "PUT":
            with lock:
                fail = failed[0] < fail_puts
                if fail:
                    failed[0] += 1
                    with open(os.path.join(state, "failed_puts"), "w") as stream:
                        stream.write(str(failed[0]))
            if fail:
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
                return [b"injected failure\n"]
            if stall_zip and environ.get("PATH_INFO", "").endswith(".zip"):
                environ["wsgi.input"].read(1024)  # part of the upload has arrived
                open(os.path.join(state, "zip_put_started"), "w").close()
                time.sleep(3600)
        return app(environ, start_response)

    return wrapped


def require_token(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    """Wrap ``app`` so that only requests bearing ``token`` get through (and, as on dCache doors,
    the anonymous ``OPTIONS`` that clients send to learn the server's capabilities)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        anonymous_ok = environ.get("REQUEST_METHOD") == "OPTIONS"
        if not anonymous_ok and environ.get("HTTP_AUTHORIZATION") != f"Bearer {token}":
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"bearer token required\n"]
        return app(environ, start_response)

    return wrapped


if __name__ == "__main__":
    root, port = sys.argv[1], int(sys.argv[2])
    app = WsgiDAVApp(
        {
            "host": "127.0.0.1",
            "port": port,
            "provider_mapping": {"/": root},
            "simple_dc": {"user_mapping": {"*": True}},
            "verbose": 1,
            "logging": {"enable": False},
        }
    )
    state = os.environ.get("DAV_STATE", root)
    served = inject_faults(create_parents_on_put(app, root), state)
    if token := os.environ.get("DAV_BEARER_TOKEN"):
        served = require_token(served, token)
    server = wsgi.Server(("127.0.0.1", port), served)
    if cert := os.environ.get("DAV_TLS_CERT"):
        server.ssl_adapter = BuiltinSSLAdapter(cert, os.environ["DAV_TLS_KEY"])
    server.start()
