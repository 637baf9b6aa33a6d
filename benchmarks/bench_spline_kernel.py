"""The spline kernels alone: the fused engine vs nflows (and, optionally, another copy of
``flashsim/spline.py``, e.g. main's), interleaved in one process on one thread.

* ``fwd+bwd``: forward and backward of the spline from a coupling network's packed output
  ``(B, D, 3K - 1)`` as the coupling transform calls it (widths and heights divided by
  the logit scale ``sqrt(298)``), at the paper size B = 2048, D = 9, K = 128;
* ``inverse``: the inverse without gradients (sampling), B = 4096 (the CPU sampling
  batch) and 8192, K = 16 (small preset) and 128 (paper).

Times are CPU times of this process (``time.process_time``), the minimum over rounds:
other work on the machine only ever adds time.

    python benchmarks/bench_spline_kernel.py
    python benchmarks/bench_spline_kernel.py --baseline /path/to/main/flashsim/spline.py
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from nflows.transforms.splines.rational_quadratic import (
    unconstrained_rational_quadratic_spline as nflows_spline,
)

from flashsim.spline import packed_rational_quadratic_spline

LOGIT_SCALE = 298**0.5  # the paper conditioners' sqrt(hidden_features)
CASES = [  # (what, B, D, K, tail bound)
    ("fwd+bwd", 2048, 9, 128, 1.0),
    ("inverse", 4096, 9, 16, 5.0),
    ("inverse", 8192, 9, 16, 5.0),
    ("inverse", 4096, 9, 128, 1.0),
]
Spline = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _split(params: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    k = (params.shape[-1] + 1) // 3
    widths, heights, derivatives = params.split([k, k, k - 1], dim=-1)
    return widths / scale, heights / scale, derivatives


def engines(inverse: bool, bound: float, scale: float, baseline: ModuleType | None) -> dict:
    """``name -> spline(x, params)`` for each engine."""

    def fused(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return packed_rational_quadratic_spline(
            x, p, inverse=inverse, tail_bound=bound, logit_scale=scale
        )

    def stock(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return nflows_spline(
            x, *_split(p, scale), inverse=inverse, tails="linear", tail_bound=bound
        )

    out: dict[str, Spline] = {"fused": fused, "nflows": stock}
    if baseline is not None:
        out["baseline"] = lambda x, p: baseline.rational_quadratic_spline(
            x, *_split(p, scale), inverse=inverse, tail_bound=bound
        )
    return out


def time_case(
    what: str, b: int, d: int, k: int, bound: float, baseline: ModuleType | None, rounds: int
) -> dict:
    """Milliseconds per call of each engine (minimum over ``rounds`` interleaved rounds)."""
    grad = what == "fwd+bwd"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g) * 0.6 * bound  # a few percent in the tails
    params = torch.randn(b, d, 3 * k - 1, generator=g).requires_grad_(grad)
    fns = engines(not grad, bound, LOGIT_SCALE if grad else 1.0, baseline)
    reps = max(1, int(2e7 // (b * d * k)))

    def once(fn: Spline) -> None:
        with torch.set_grad_enabled(grad):
            y, logabsdet = fn(x, params)
            if grad:
                params.grad = None
                (y.sum() + logabsdet.sum()).backward()

    best = {name: float("inf") for name in fns}
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            once(fns[name])  # warm
            start = time.process_time()
            for _ in range(reps):
                once(fns[name])
            best[name] = min(best[name], (time.process_time() - start) / reps * 1e3)
    return best


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_spline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="another flashsim/spline.py to time")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = _load(args.baseline) if args.baseline else None
    print("| case | " + " | ".join(engines(False, 1.0, 1.0, baseline)) + " | nflows / fused |")
    print("|---|" + "---:|" * (len(engines(False, 1.0, 1.0, baseline)) + 1))
    for case in CASES:
        ms = time_case(*case, baseline=baseline, rounds=args.rounds)
        what, b, d, k, _ = case
        cells = " | ".join(f"{v:.1f} ms" for v in ms.values())
        print(f"| {what} B={b} D={d} K={k} | {cells} | {ms['nflows'] / ms['fused']:.2f}x |")


if __name__ == "__main__":
    main()
