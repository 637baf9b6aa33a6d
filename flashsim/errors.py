"""User-facing errors.

Every problem a user can fix (bad input file, missing branch, existing output, wrong
store) is raised as :class:`FlashSimError` with a one-paragraph message naming the
file, what is wrong and what to do. The CLI prints the message and exits non-zero,
without a traceback; library users can catch it.
"""

from __future__ import annotations


class FlashSimError(Exception):
    """An error the user can act on; ``str(err)`` is the whole message.

    torch's DataLoader re-raises a worker's exception as ``type(err)(text)`` where the
    text is "Caught StoreError in DataLoader worker process 0. Original Traceback ...";
    the original one-paragraph message is recovered from it (no traceback for the user).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(_unwrap_worker_message(str(message), type(self)), *args)


def _unwrap_worker_message(text: str, cls: type) -> str:
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


class InputError(FlashSimError):
    """An input file is missing, unreadable or lacks what is needed."""


class StoreError(FlashSimError):
    """A store is missing, incomplete, of the wrong object, or already exists."""
