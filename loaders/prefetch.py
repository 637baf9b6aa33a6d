"""Background prefetching: run a producer in a thread, a bounded number of items ahead.

The chunked and webdataset loaders produce shuffled windows (chunk decoding in blosc
and numpy's gathers release the GIL, so a thread overlaps them with the training
step); the consumer only cuts batches. Pinned host memory and ``non_blocking``
copies are handled where the windows are built (:mod:`loaders.windows`).

Examples
--------
>>> with BackgroundIterator(iter(range(5)), depth=2) as it:
...     list(it)
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BackgroundIterator(Generic[T]):
    """Iterate ``source`` in a daemon thread, keeping at most ``depth`` items ready.

    Exceptions raised by ``source`` are re-raised in the consumer. :meth:`close`
    (also called on exhaustion, on ``with`` exit and on garbage collection) stops
    the thread and closes ``source`` there, so its ``finally`` blocks run.
    """

    def __init__(self, source: Iterator[T], depth: int = 2, name: str = "flashsim-prefetch"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
            else:
                self._put(_END)
        except BaseException as err:
            self._put(_Failure(err))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> BackgroundIterator[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer thread and drop what it prepared."""
        if self._stop.is_set():
            return
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
