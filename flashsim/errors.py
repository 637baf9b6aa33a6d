"""User-facing errors.

Every problem a user can fix (bad input file, missing branch, existing output, wrong
store) is raised as :class:`FlashSimError` with a one-paragraph message naming the
file, what is wrong and what to do. The CLI prints the message and exits non-zero,
without a traceback; library users can catch it.
"""

from __future__ import annotations


class FlashSimError(Exception):
    """An error the user can act on; ``str(err)`` is the whole message."""


class InputError(FlashSimError):
    """An input file is missing, unreadable or lacks what is needed."""


class StoreError(FlashSimError):
    """A store is missing, incomplete, of the wrong object, or already exists."""
