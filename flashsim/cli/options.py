"""Click options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from flashsim.devices import DEVICE_METAVAR, parse_device
from flashsim.errors import FlashSimError
from flashsim.flow_config import SPLINE_ENGINES
from flashsim.layouts import OBJECTS
from flashsim.store import DEFAULT_DATA_DIR


class DeviceParam(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked by :func:`flashsim.devices.parse_device`."""

    name = "device"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return DEVICE_METAVAR

    def convert(
        # Any as in click.ParamType.convert: a command-line string or a Python default
        self,
        value: Any,
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> str:
        try:
            return parse_device(value)
        except FlashSimError as err:
            self.fail(str(err), param, ctx)


LAYOUT_LIST = "LAYOUT_LIST"
"""Where a command's help says this, :func:`naming_layouts` lists the layouts."""


def naming_layouts(command: click.Command) -> click.Command:
    """Replace ``LAYOUT_LIST`` in ``command``'s help by the registry's layouts, so every
    ``--help`` names the layouts there are (``jets, muons, jets-run3``)."""
    command.help = (command.help or "").replace(LAYOUT_LIST, ", ".join(OBJECTS))
    return command


def layout_argument(command: Callable) -> Callable:
    """The ``OBJECT`` argument: a layout name of the registry."""
    return click.argument("obj", metavar="OBJECT", type=click.Choice(OBJECTS))(command)


def positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Click callback: an optional integer that must be >= 1."""
    if value is not None and value < 1:
        raise click.BadParameter("must be >= 1")
    return value


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
"""What ``click.option(...)`` returns: it adds one option to a command function."""


def count_option(
    *decls: str, minimum: int = 1, default: int | None = None, help: str | None = None
) -> Decorator:
    """An integer option that must be ``>= minimum``; its default shown unless it is None
    (the help then says what None means)."""
    return click.option(
        *decls,
        type=click.IntRange(min=minimum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def seed_option(help: str | None = None) -> Decorator:
    """``--seed``: an integer, default 0."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def quiet_option(help: str = "No progress bars.") -> Decorator:
    """``--quiet``/``-q``: a flag that turns the progress bars (and ``help`` says what else) off."""
    return click.option("--quiet", "-q", is_flag=True, help=help)


def overwrite_option(help: str = "Replace OUT if it exists (otherwise an error).") -> Decorator:
    """``--overwrite``: a flag; without it an existing output is an error."""
    return click.option("--overwrite", is_flag=True, help=help)


def progress_option(help: str | None = None) -> Decorator:
    """``--progress/--no-progress``, default on."""
    return click.option("--progress/--no-progress", default=True, show_default=True, help=help)


DATA_HELP = "A store (shards/jets.zarr) or the directory `flashsim prep --out` wrote."


def data_option(command: Callable) -> Callable:
    """``--data``: a store or a prep output directory (default ``shards``)."""
    return click.option(
        "--data",
        type=click.Path(),
        default=str(DEFAULT_DATA_DIR),
        show_default=True,
        help=DATA_HELP,
    )(command)


def resumable_data_option(command: Callable) -> Callable:
    """``--data`` of ``train``: left out, ``shards``, or with ``--resume`` the run's store."""
    return click.option(
        "--data",
        type=click.Path(),
        default=None,
        help=f"{DATA_HELP}  [default: {DEFAULT_DATA_DIR}; with --resume the run's store]",
    )(command)


DEVICE_HELP = "Where the flow runs; auto: CUDA when available, else the CPU; cuda:N: GPU N."


def device_option(command: Callable | None = None, *, help: str = DEVICE_HELP) -> Callable:
    """``--device auto|cpu|cuda|cuda:N`` (auto: CUDA when available); the same parser for
    every command. Use as ``@device_option`` or ``@device_option(help=...)``."""

    def decorate(command: Callable) -> Callable:
        return click.option(
            "--device", type=DeviceParam(), default="auto", show_default=True, help=help
        )(command)

    return decorate if command is None else decorate(command)


def spline_option(help_text: str) -> Callable[[Callable], Callable]:
    """``--spline fused|nflows`` (default: unset, i.e. the command's own default), with
    the command's own ``help_text`` before the common explanation."""

    def decorate(command: Callable) -> Callable:
        return click.option(
            "--spline",
            type=click.Choice(SPLINE_ENGINES),
            default=None,
            help=f"{help_text} fused: flashsim's sync-free kernel; nflows: the library's "
            "own (same mathematics, same weights).",
        )(command)

    return decorate


def branch_map_options(command: Callable) -> Callable:
    """``--branch-map FILE`` and ``--branch NAME=SOURCE`` (repeatable), for commands that
    read NanoAOD; :func:`branch_mapping` turns them into the library's ``branch_map``."""
    command = click.option(
        "--branch",
        "branch_options",
        multiple=True,
        metavar="NAME=SOURCE",
        help="Read branch NAME from branch SOURCE, or set it to a constant (repeatable).",
    )(command)
    return click.option(
        "--branch-map",
        type=click.Path(dir_okay=False),
        default=None,
        help='JSON file {"Jet_puId": "Jet_puIdDisc", "Jet_qgl": -1, ...} for branches the '
        "input lacks.",
    )(command)


def branch_mapping(branch_map: str | None, branch_options: tuple[str, ...]) -> dict:
    """The ``branch_map`` argument from the values of :func:`branch_map_options`."""
    from pipelines.branches import load_branch_map, parse_branch_option

    mapping = dict(load_branch_map(branch_map)) if branch_map else {}
    mapping.update(parse_branch_option(text) for text in branch_options)
    return mapping
