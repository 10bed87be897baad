"""A real WebDAV server (wsgidav on cheroot) for the tests: ``python webdav_server.py ROOT PORT``.

Like the production doors (dCache, XRootD), it creates missing parent collections on
PUT; stock wsgidav answers 409 instead, which the butler's datastore does not expect.
"""

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from cheroot import wsgi
from wsgidav.wsgidav_app import WsgiDAVApp


def create_parents_on_put(app: Callable[..., Iterable[bytes]], root: str) -> Callable[..., Iterable[bytes]]:
    """Wrap ``app`` so a PUT first creates the target's parent directories under ``root``."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "PUT":
            target = os.path.join(root, unquote(environ.get("PATH_INFO", "")).lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
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
    wsgi.Server(("127.0.0.1", port), create_parents_on_put(app, root)).start()
