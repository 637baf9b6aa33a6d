"""Devices: the one parser of ``--device`` values and the one place they become a
``torch.device`` (every workflow: loaders, train, validate, generate, bench-loader).

Accepted values (:func:`parse_device`): ``auto`` (CUDA when available, else the CPU),
``cpu``, ``cuda`` (the current GPU) and ``cuda:N`` (GPU number ``N``). Parsing needs
no torch, so the command line checks the option before importing it.

Examples
--------
>>> parse_device("cuda:1"), parse_device("cpu")
('cuda:1', 'cpu')
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from flashsim.errors import FlashSimError
from flashsim.options import Choices

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]
DEVICES: Choices[DeviceName] = Choices.of("device", DeviceName)
"""The named devices; ``cuda:N`` is accepted besides them."""

DEVICE_METAVAR = "[auto|cpu|cuda[:N]]"

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def parse_device(text: str) -> str:
    """``text`` checked as a device value: one of :data:`DEVICES` or ``cuda:N``.

    Raises:
        FlashSimError: naming the value and listing the valid forms.
    """
    if isinstance(text, str) and (text in DEVICES or _CUDA_INDEX.fullmatch(text)):
        return text
    raise FlashSimError(
        f"Unknown device {text!r}; choose one of {', '.join(DEVICES)} or cuda:N (GPU number "
        "N, e.g. cuda:1)."
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """A device value (:func:`parse_device`) or a ``torch.device`` as a ``torch.device``.

    ``"auto"``: CUDA when available, else the CPU.

    Raises:
        FlashSimError: an unknown value, or a CUDA device this machine does not have.
    """
    import torch

    if isinstance(device, str):
        if parse_device(device) == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FlashSimError(
                f"device {str(device)!r} was asked for but torch {torch.__version__} sees no "
                "CUDA GPU on this machine; use device 'cpu' (--device cpu on the command line)."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FlashSimError(
                f"device {str(device)!r} was asked for but this machine has {count} CUDA "
                f"GPU(s), cuda:0 to cuda:{count - 1}; pick one of those or 'cuda'."
            )
    return device
