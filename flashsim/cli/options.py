"""Click options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable

import click


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
