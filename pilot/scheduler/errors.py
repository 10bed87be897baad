"""Request errors the scheduler answers with a 4xx status."""

from __future__ import annotations


class RequestError(Exception):
    """A request the scheduler refuses; ``status`` is the HTTP status of the answer."""

    status = 400


class LeaseNotFound(RequestError):
    """No such lease was ever handed out."""

    status = 404


class LeaseGone(RequestError):
    """The lease lapsed and its quanta were re-queued."""

    status = 410
