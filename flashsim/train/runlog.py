"""A run's record: ``train.log`` (the summaries and errors), ``run.json`` (the options,
environment and status) and the metrics files
(:class:`~flashsim.train.metrics.MetricsLogger`). Rank 0 writes; on other ranks every
method is a no-op.

Nothing half-written looks complete, even on a full disk: ``run.json`` and the metrics
are replaced whole (atomically), a ``train.log`` line that cannot be written is undone,
and a failed write stops the run with a one-paragraph output error
(:func:`flashsim.outputs.output_error`). ``run.json``'s ``status`` says how the run
ended: ``state`` is ``incomplete`` while it runs (and stays so when the process was killed
or the disk was too full to record the end), then ``completed``, ``paused``,
``interrupted`` or ``failed`` (with the ``error``). How far it got is in the metrics and
the checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from types import TracebackType

from flashsim.errors import FlashSimError
from flashsim.outputs import output_error, output_errors, write_text_atomic
from flashsim.train.metrics import MetricsLogger

log = logging.getLogger("flashsim.train")

RUN_FILE = "run.json"
LOG_FILE = "train.log"
INCOMPLETE = "incomplete"
"""``run.json``'s ``status.state`` until the run records how it ended."""


def _monitor_note(record: dict) -> str:
    """The conditioning monitor's part of an epoch's log line ('' when it did not run)."""
    if "conditioning_score" not in record:
        return ""
    return (
        f"  conditioning score {record['conditioning_score']:.3g} (ΔNLL "
        f"{record['delta_nll']:.3g}, PIT KS {record['pit_ks_max']:.3g}/"
        f"{record['pit_ks_floor']:.3g}; {record['monitor_s']:.1f} s)"
    )


class _LogFile(logging.Handler):
    """``train.log``, each record appended in one write. A write that fails (a full disk)
    is undone, so the file never ends in a partial line, and kept in ``failure`` instead
    of printed as a traceback; nothing more is written after it."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.failure: OSError | None = None
        with output_errors(path):
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is not None:
            return
        try:
            data = memoryview((self.format(record) + "\n").encode())
        except Exception:
            self.handleError(record)
            return
        size = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as err:
            self.failure = err
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        super().close()


class RunLog:
    """Context manager: attaches ``train.log`` to the ``flashsim.train`` logger and opens
    the metrics files; on exit records a failure in ``run.json`` and ``train.log`` (the
    caller shows it to the user) and closes everything.

    Args:
        out: the run directory.
        main: this process writes (rank 0).
        history: the records already known (a resumed run's).
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, out: Path, main: bool, history: list[dict], tensorboard: bool) -> None:
        self.out = out
        self.main = main
        self.metrics = MetricsLogger(out, history, enabled=main, tensorboard=tensorboard)
        self._handler: _LogFile | None = None
        self._previous_level = log.level
        self._info: dict | None = None

    def __enter__(self) -> RunLog:
        if self.main:
            self._handler = _LogFile(self.out / LOG_FILE)
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(self._handler)
            if log.getEffectiveLevel() > logging.INFO:
                log.setLevel(logging.INFO)  # the run log always gets the summaries
        return self

    def start(self, info: dict, summary: str) -> None:
        """Write ``run.json`` (``info``, state ``incomplete``) and log the multi-line
        ``summary``."""
        if not self.main:
            return
        self._info = info
        self._write_run_file(INCOMPLETE)
        for line in summary.splitlines():
            log.info(line)
        self._check_log()
        self.metrics.log_text("run", summary.replace("\n", "  \n"))

    def epoch(self, record: dict, history: list[dict], epochs: int, is_best: bool) -> None:
        """Record a finished epoch (metrics files and one ``train.log`` line)."""
        self.metrics.log_epoch(record, history)
        if self.main:
            log.info(
                f"epoch {record['epoch']}/{epochs}: train {record['train_loss']:.4f}  "
                f"val {record['val_loss']:.4f}{' (best)' if is_best else ''}  "
                f"lr {record['lr']:.3g}  {record['samples_per_s']:,.0f} rows/s  data wait "
                f"{100 * record['data_wait_frac']:.0f}%  compute "
                f"{100 * record['compute_s'] / max(record['epoch_s'], 1e-12):.0f}%"
                + _monitor_note(record)
            )
            self._check_log()

    def finish(self, state: str) -> None:
        """Record in ``run.json`` how the run ended: ``completed``, ``paused`` or
        ``interrupted``."""
        if self.main:
            self._write_run_file(state)

    def _write_run_file(self, state: str, error: str | None = None) -> None:
        assert self._info is not None
        status = {"state": state}
        if error is not None:
            status["error"] = error
        text = json.dumps({**self._info, "status": status}, indent=1, default=str)
        write_text_atomic(self.out / RUN_FILE, text)

    def _check_log(self) -> None:
        """Raise a ``train.log`` write that failed as a one-paragraph output error."""
        if self._handler is not None and self._handler.failure is not None:
            raise output_error(self._handler.failure, self._handler.path)

    def _record_failure(self, error: BaseException) -> None:
        """``run.json`` state ``failed`` and the error in ``train.log``, as far as the disk
        allows: the run's own error is the one to report."""
        message = str(error)
        if not isinstance(error, FlashSimError):
            message = f"{type(error).__name__}: {message}" if message else type(error).__name__
        if isinstance(error, FlashSimError) and self._handler is not None:
            self._handler.handle(log.makeRecord(log.name, logging.ERROR, "", 0, message, (), None))
        if self.main and self._info is not None:
            with contextlib.suppress(OSError, FlashSimError):
                self._write_run_file("failed", message)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if error is None:
                self.metrics.close()
                self._check_log()
                return
            with contextlib.suppress(OSError, FlashSimError):
                self.metrics.close()
            self._record_failure(error)
        finally:
            handler, self._handler = self._handler, None
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
                log.setLevel(self._previous_level)
