"""The one exception for bad data: a fatal problem described in one sentence.

It lives in its own module so that every data module (validation, image labels, masks) and
the tasks that decode dense-map files can raise it without importing each other.
"""

from __future__ import annotations


class DataError(ValueError):
    """A fatal problem in the data, described in one sentence (file, entry, what to do)."""


__all__ = ["DataError"]
