"""Bearer tokens for the scheduler, read from a file (never from the command line)."""

from __future__ import annotations

from pathlib import Path

from .errors import BundleError


def read_token(path: str | Path) -> str:
    """Return the token in ``path`` (surrounding whitespace stripped).

    Raises
    ------
    BundleError
        The file is missing, unreadable or empty.
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise BundleError(f"cannot read token file {path}: {err.strerror or err}") from None
    if not token or any(c.isspace() for c in token):
        raise BundleError(f"token file {path} must hold one token (non-empty, no whitespace)")
    return token
