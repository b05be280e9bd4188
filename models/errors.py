"""The project's error classes: one base, and a few kinds that say what went wrong.

Every error xmodal raises on purpose derives from `XmodalError` through one of the kinds below. The kind
carries the meaning (the caller's input is wrong, a thing is missing, the service cannot do it now), so
the HTTP layer maps kinds to statuses (app/errors.py) and anything else is a bug: a 500, logged. This module
is the lowest layer: it imports nothing, so the indexer, the models and a torch-free client can all use it.
"""

from __future__ import annotations


class XmodalError(Exception):
    """Base of every error xmodal raises on purpose; the message says what to do next."""


class InvalidInput(XmodalError, ValueError):
    """The caller's input is wrong (a value out of range, a malformed body): fix it and retry."""


class Malformed(InvalidInput):
    """The input cannot be parsed at all (not JSON, nested too deeply, a number no float holds)."""


class TooLarge(InvalidInput):
    """The input is over a size limit (bytes, pixels)."""


class NotFound(XmodalError):
    """A named thing (an index, an item, a file) does not exist."""


class Conflict(XmodalError):
    """The request contradicts the state it meets (e.g. an index built with other weights)."""


class Unavailable(XmodalError):
    """The service cannot do this now (still loading, weights missing); retrying later may help."""

    retry_after_s = 5


class Overloaded(Unavailable):
    """Too much work queued; retry shortly."""

    retry_after_s = 1


class Unsupported(XmodalError):
    """This model or server cannot do this at all (e.g. captioning without a text decoder)."""
