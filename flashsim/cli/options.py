"""Click options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable

import click

from flashsim.store import DEFAULT_DATA_DIR
from flashsim.train.config import DEVICES


def positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Click callback: an optional integer that must be >= 1."""
    if value is not None and value < 1:
        raise click.BadParameter("must be >= 1")
    return value


def data_option(command: Callable) -> Callable:
    """``--data``: a store or a prep output directory (default ``shards``)."""
    return click.option(
        "--data",
        type=click.Path(),
        default=str(DEFAULT_DATA_DIR),
        show_default=True,
        help="A store (shards/jets.zarr) or the directory `flashsim prep --out` wrote.",
    )(command)


def device_option(command: Callable) -> Callable:
    """``--device auto|cpu|cuda`` (auto: CUDA when available)."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help="Where the flow runs; auto: CUDA when available, else the CPU.",
    )(command)


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
