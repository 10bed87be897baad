"""The DBB storage token: resolved in the job from the reference the bundle carries."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..bundle_model import TokenRef
from ..errors import StageInError

HTTP_TOKEN_VARIABLE = "LSST_HTTP_AUTH_BEARER_TOKEN"
"""What `lsst.resources` reads (a token, or the path of a file holding one); sent over HTTPS only."""


def apply_token(ref: TokenRef | None) -> None:
    """Make the referenced token the one `lsst.resources` sends to the DBB's storage.

    Raises
    ------
    StageInError
        The referenced variable is unset or the file is unreadable or empty.
    """
    if ref is None:
        return
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise StageInError(f"the bundle's DBB token variable ${ref.env} is not set in the job")
        os.environ[HTTP_TOKEN_VARIABLE] = value
        return
    path = Path(os.path.expandvars(str(ref.file))).expanduser().absolute()
    try:
        content = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as err:
        raise StageInError(f"cannot read the bundle's DBB token file {path}: {err.strerror}") from None
    if not content:
        raise StageInError(f"the bundle's DBB token file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StageInError(
            f"the bundle's DBB token file {path} must be readable by its owner only (chmod 600)"
        )
    # The path, not the value: lsst.resources re-reads the file when it changes (token renewal).
    os.environ[HTTP_TOKEN_VARIABLE] = str(path)
