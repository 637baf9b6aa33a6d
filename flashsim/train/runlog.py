"""A run's record: ``train.log`` (the summaries and errors), ``run.json`` (the options
and environment) and the metrics files (:class:`~flashsim.train.metrics.MetricsLogger`).
Rank 0 writes; on other ranks every method is a no-op.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType

from flashsim.errors import FlashSimError
from flashsim.outputs import write_text_atomic
from flashsim.train.metrics import MetricsLogger

log = logging.getLogger("flashsim.train")

RUN_FILE = "run.json"
LOG_FILE = "train.log"


def _monitor_note(record: dict) -> str:
    """The conditioning monitor's part of an epoch's log line ('' when it did not run)."""
    if "conditioning_score" not in record:
        return ""
    return (
        f"  conditioning score {record['conditioning_score']:.3g} (ΔNLL "
        f"{record['delta_nll']:.3g}, PIT KS {record['pit_ks_max']:.3g}/"
        f"{record['pit_ks_floor']:.3g}; {record['monitor_s']:.1f} s)"
    )


class RunLog:
    """Context manager: attaches ``train.log`` to the ``flashsim.train`` logger and opens
    the metrics files; on exit records a :class:`FlashSimError` in ``train.log`` (the
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
        self._handler: logging.Handler | None = None
        self._previous_level = log.level

    def __enter__(self) -> RunLog:
        if self.main:
            self._handler = logging.FileHandler(self.out / LOG_FILE)
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self._handler.setLevel(logging.INFO)
            log.addHandler(self._handler)
            if log.getEffectiveLevel() > logging.INFO:
                log.setLevel(logging.INFO)  # the run log always gets the summaries
        return self

    def start(self, info: dict, summary: str) -> None:
        """Write ``run.json`` (``info``) and log the multi-line ``summary``."""
        if not self.main:
            return
        write_text_atomic(self.out / RUN_FILE, json.dumps(info, indent=1, default=str))
        for line in summary.splitlines():
            log.info(line)
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

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.metrics.close()
        handler, self._handler = self._handler, None
        if handler is None:
            return
        if isinstance(error, FlashSimError):
            handler.handle(log.makeRecord(log.name, logging.ERROR, "", 0, str(error), (), None))
        log.removeHandler(handler)
        handler.close()
        log.setLevel(self._previous_level)
