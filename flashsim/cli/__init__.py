"""The ``flashsim`` command line: thin click wrappers over library functions.

Each sub-command lives in its own module and only parses options, calls the library
and prints. :class:`~flashsim.errors.FlashSimError` is shown as a one-paragraph
message (no traceback) with exit code 2; so is an ``OSError`` that no library code
translated (a last resort: outputs and inputs translate their own). SIGTERM and SIGHUP
stop a command as Ctrl-C does, cleanup included (exit code 128 + signal number).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from types import FrameType

import click

from flashsim import __version__
from flashsim.errors import FlashSimError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a command the way Ctrl-C does (cleanup included)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that every command cleans up as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Worker processes (prep --workers) do not get the parent's SIGTERM: stop them first,
    # so that the parent's cleanup does not wait for their tasks to finish.
    for child in multiprocessing.active_children():
        child.terminate()
    raise Terminated(signum)


class _FlashSimGroup(click.Group):
    def invoke(self, ctx: click.Context):
        # matplotlib logs a "findfont: ... not found" line per missing font when a plot
        # falls back to another one (mathtext on a machine without its fonts): noise in a
        # terminal, the plots are fine
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        handled = []
        if threading.current_thread() is threading.main_thread():
            handled = [s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]
        for sig in handled:  # not where the user set a handler or SIG_IGN (nohup)
            signal.signal(sig, _terminate)
        try:
            return super().invoke(ctx)
        except Terminated as stop:
            name = signal.Signals(stop.signum).name
            click.secho(f"Stopped by {name}; partial outputs were removed.", fg="red", err=True)
            sys.exit(128 + stop.signum)
        except FlashSimError as err:
            click.secho(f"Error: {err}", fg="red", err=True)
            sys.exit(2)
        except BrokenPipeError:  # `flashsim info ... | head`: the reader left
            sys.stderr.close()
            sys.exit(1)
        except OSError as err:  # a system error no library code translated: no traceback
            from flashsim.outputs import system_error_message

            click.secho(f"Error: {system_error_message(err)}", fg="red", err=True)
            sys.exit(2)
        finally:
            for sig in handled:
                signal.signal(sig, signal.SIG_DFL)


@click.group(cls=_FlashSimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flashsim")
def main() -> None:
    """FlashSim toolkit: prepare shards, load them fast, train, validate and run spline flows.

    \b
    Typical session:
      flashsim toy --events 100000 --out ttbar_toy.root
      flashsim prep ttbar_toy.root --out shards/
      flashsim train jets
      flashsim validate jets
      flashsim generate ttbar_toy.root --out flash.root
      flashsim bench-loader --quick
    """


def _register() -> None:
    # Imported here so that `flashsim --help` stays fast and each command module
    # stays independent of the others.
    from flashsim.cli import bench, demo, toy
    from flashsim.cli import generate as generate_cli
    from flashsim.cli import prep as prep_cli
    from flashsim.cli import train as train_cli
    from flashsim.cli import validate as validate_cli

    main.add_command(toy.toy)
    main.add_command(prep_cli.prep)
    main.add_command(prep_cli.info)
    main.add_command(train_cli.train)
    main.add_command(generate_cli.generate)
    main.add_command(bench.bench_loader)
    main.add_command(demo.demo)
    main.add_command(validate_cli.validate)


_register()
