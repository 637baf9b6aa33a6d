"""The validation rows in the views the conditioning checks need.

:class:`CheckRows` holds the conditioning and the FullSim and FlashSim targets of one
split, preprocessed (what the flow models) and physical (what physicists bin in), and
derives from the layout's :class:`~flashsim.layouts.ColumnRoles` each row's class (jet
flavour, muon promptness) and its generator-level pT and eta.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from flashsim.layouts import ColumnRoles, Layout
from flashsim.transforms import Preprocessing


@dataclass(frozen=True)
class CheckRows:
    """One split's rows, ``N`` of them.

    Attributes:
        layout: the column layout (its ``roles`` name the classes, gen pT/eta, ...).
        conditioning: ``(N, n_conditioning)`` float32, preprocessed.
        full, flash: ``(N, n_targets)`` float32 FullSim targets and one FlashSim draw per
            row, preprocessed.
        full_physical, flash_physical: the same in physical units.
        labels: ``(N,)`` int, index of the row's class in ``layout.roles.classes``, -1
            for a row of no class.
        gen_pt, gen_eta: ``(N,)`` float64, generator-level pT (GeV) and eta.
    """

    layout: Layout
    conditioning: np.ndarray
    full: np.ndarray
    flash: np.ndarray
    full_physical: np.ndarray
    flash_physical: np.ndarray
    labels: np.ndarray
    gen_pt: np.ndarray
    gen_eta: np.ndarray

    @classmethod
    def build(
        cls,
        layout: Layout,
        preprocessing: Preprocessing,
        conditioning: np.ndarray,
        full: np.ndarray,
        flash: np.ndarray,
        full_physical: np.ndarray | None = None,
        flash_physical: np.ndarray | None = None,
    ) -> CheckRows:
        """From preprocessed arrays; the physical views are computed unless given."""
        roles = _roles_of(layout)
        if full_physical is None:
            full_physical = preprocessing.inverse(full, columns=layout.targets)
        if flash_physical is None:
            flash_physical = preprocessing.inverse(flash, columns=layout.targets)
        physical = preprocessing.inverse(conditioning, columns=layout.conditioning)
        names = layout.conditioning_columns

        def column(name: str) -> np.ndarray:
            return physical[:, names.index(name)].astype(np.float64)

        values = column(roles.class_column)
        labels = np.full(len(values), -1, np.int64)
        for k, (_, value) in enumerate(roles.classes):
            labels[np.isclose(values, value)] = k
        return cls(
            layout=layout,
            conditioning=conditioning,
            full=full,
            flash=flash,
            full_physical=full_physical,
            flash_physical=flash_physical,
            labels=labels,
            gen_pt=column(roles.gen_pt),
            gen_eta=column(roles.gen_eta),
        )

    @property
    def roles(self) -> ColumnRoles:
        """The layout's column roles (a layout without them cannot be built into rows)."""
        return _roles_of(self.layout)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.roles.classes)

    def head(self, n: int) -> CheckRows:
        """The first ``n`` rows."""
        arrays: tuple[str, ...] = ("conditioning", "full", "flash")
        arrays += ("full_physical", "flash_physical", "labels", "gen_pt", "gen_eta")
        return replace(self, **{name: getattr(self, name)[:n] for name in arrays})

    def __len__(self) -> int:
        return len(self.full)

    def target(self, name: str) -> int:
        """Index of target column ``name`` in the ``(N, n_targets)`` arrays."""
        return self.layout.index(name) - self.layout.n_conditioning


def _roles_of(layout: Layout) -> ColumnRoles:
    if layout.roles is None:
        raise ValueError(f"the {layout.object} layout has no column roles")
    return layout.roles
