"""Parse memory sizes as operators write them ('2GiB', '500MB', '1.5G')."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Return ``text`` in bytes; K/M/G/T are binary (1024-based) with or without 'iB'/'B'.

    Raises
    ------
    ValueError
        ``text`` is not a size.
    """
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size (e.g. '2GiB', '500MB')")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
