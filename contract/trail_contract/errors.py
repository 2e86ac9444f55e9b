"""The project's error base, so the command line turns them into a message in one place."""

from __future__ import annotations


class TrailError(ValueError):
    """An input that cannot be used (a flag, a file, an endpoint), with the reason.

    Library code raises a subclass; ``trail`` prints ``error: <message>`` and exits 2.
    """
