"""nflows' ``LULinear`` with its index arrays on the device, for the fused engine.

nflows 0.14 scatters the LU factors' entries with numpy index arrays; on a GPU every
forward pass then copies those indices from pageable host memory, a synchronous
transfer, which also cannot be recorded in a CUDA graph. :class:`DeviceIndexLULinear`
keeps the same indices as (non-persistent) buffers, so they move with the module and
the ``state_dict`` stays exactly ``LULinear``'s; the mathematics is unchanged.
"""

from __future__ import annotations

import torch
from nflows.transforms import LULinear


class DeviceIndexLULinear(LULinear):
    """``LULinear`` whose lower, upper and diagonal index arrays are device buffers."""

    def __init__(self, features: int, using_cache: bool = False, identity_init: bool = True,
                 eps: float = 1e-3) -> None:  # fmt: skip
        super().__init__(features, using_cache=using_cache, identity_init=identity_init, eps=eps)
        for name in ("lower", "upper", "diag"):
            rows, cols = getattr(self, f"{name}_indices")
            self.register_buffer(f"_{name}_rows", torch.as_tensor(rows), persistent=False)
            self.register_buffer(f"_{name}_cols", torch.as_tensor(cols), persistent=False)

    def _create_lower_upper(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.features
        lower = self.lower_entries.new_zeros(n, n)
        lower[self._lower_rows, self._lower_cols] = self.lower_entries
        # the diagonal of L is all ones without loss of generality (as nflows)
        lower[self._diag_rows, self._diag_cols] = 1.0
        upper = self.upper_entries.new_zeros(n, n)
        upper[self._upper_rows, self._upper_cols] = self.upper_entries
        upper[self._diag_rows, self._diag_cols] = self.upper_diag
        return lower, upper
