"""Registries of the string-valued options: one home per option's allowed values.

Each option is a ``Literal`` type (what type checkers see), named constants for its
values (what code writes instead of the bare string), and a :class:`Choices` registry
built from the ``Literal``: the one normaliser, the one error listing the valid values,
and the click ``Choice`` of the CLI (in the spirit of uproot's ``_regularize_library``).

Torch- and click-free at import, so the CLI's ``--help`` stays fast. Registries that
belong to a module live there, built from this class: presets
(:data:`flashsim.presets.PRESETS`), loader kinds (:data:`flashsim.store.LOADER_KINDS`)
and named devices (:data:`flashsim.devices.DEVICES`, with the one ``--device`` parser).

Examples
--------
>>> GEN_MUONS.normalize("final-state")
'final-state'
>>> GEN_MUONS.normalize("some")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
FlashSimError: Unknown gen-muon definition 'some'; choose one of final-state, all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, get_args

from flashsim.errors import FlashSimError

if TYPE_CHECKING:
    import click

V = TypeVar("V", bound=str)


@dataclass(frozen=True)
class Choices(Generic[V]):
    """The allowed values of one option, in display order (the first is the default)."""

    what: str
    """What a value is, for messages: ``"store format"``."""
    values: tuple[V, ...]

    @classmethod
    def of(cls, what: str, literal: object) -> Choices:
        """The registry of a ``Literal[...]`` type."""
        return cls(what, tuple(get_args(literal)))

    @property
    def default(self) -> V:
        return self.values[0]

    def normalize(self, value: object, error: type[FlashSimError] = FlashSimError) -> V:
        """``value`` as one of :attr:`values`; ``error`` listing them otherwise."""
        if isinstance(value, str) and value in self.values:
            return value
        raise error(f"Unknown {self.what} {value!r}; choose one of {', '.join(self.values)}.")

    def click_choice(self, *extra: str) -> click.Choice:
        """The click parameter type accepting :attr:`values` (and ``extra``, e.g. ``"none"``)."""
        import click

        return click.Choice([*self.values, *extra])

    def __contains__(self, value: object) -> bool:
        return value in self.values

    def __iter__(self) -> Iterator[V]:
        return iter(self.values)


# -- gen-muon definition (prep --gen-muons, the jets' conditioning) --------------------

GenMuons = Literal["final-state", "all"]
FINAL_STATE: GenMuons = "final-state"
"""|pdgId| == 13 and status == 1 (the default; what generate simulates)."""
ALL_GEN_MUONS: GenMuons = "all"
"""Every |pdgId| == 13, the original FlashSim definition (also counts hard-process copies)."""
GEN_MUONS: Choices[GenMuons] = Choices.of("gen-muon definition", GenMuons)

# -- Pileup_sumEOOT transform (prep --sum-eoot) ----------------------------------------

SumEOOT = Literal["log1p", "log"]
SUM_EOOT_LOG1P: SumEOOT = "log1p"
"""log(1 + x): keeps events with sumEOOT == 0 (the default)."""
SUM_EOOT_LOG: SumEOOT = "log"
"""log(x), the original: rows with sumEOOT == 0 are dropped (counted)."""
SUM_EOOT: Choices[SumEOOT] = Choices.of("Pileup_sumEOOT transform", SumEOOT)

# -- toy processes (flashsim toy --process) --------------------------------------------

ToyProcess = Literal["ttbar", "wjets"]
TTBAR: ToyProcess = "ttbar"
WJETS: ToyProcess = "wjets"
TOY_PROCESSES: Choices[ToyProcess] = Choices.of("toy process", ToyProcess)

# -- store formats (prep --format, readers) --------------------------------------------

StoreFormat = Literal["zarr", "webdataset", "hdf5"]
ZARR: StoreFormat = "zarr"
WEBDATASET: StoreFormat = "webdataset"
HDF5: StoreFormat = "hdf5"
STORE_FORMATS: Choices[StoreFormat] = Choices.of("store format", StoreFormat)
