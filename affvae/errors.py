"""User-facing errors.

Anything the user can fix (a bad file, a bad value, a missing class) is raised as
:class:`AffvaeError` with a one-line message that names the file, key or value and
says what was expected.  The CLI prints that line and exits non-zero; only with
``--debug`` does it show the traceback.  Programming errors stay ordinary
exceptions so that they are never mistaken for bad input.
"""

from __future__ import annotations


class AffvaeError(Exception):
    """An error caused by input the user can correct."""


class DataError(AffvaeError):
    """A dataset folder, file or value is unreadable or inconsistent."""


class AffinityError(AffvaeError):
    """An affinity matrix (CSV or computed) is malformed."""


class ConfigError(AffvaeError):
    """A configuration key or value is unknown or out of range."""
