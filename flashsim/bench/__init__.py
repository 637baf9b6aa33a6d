"""``flashsim bench-loader``: every loader side by side, the original per-row datasets
included, in load-only and training modes.

>>> from flashsim.bench import BenchConfig, run_benchmark, format_table   # doctest: +SKIP
>>> result = run_benchmark(BenchConfig.quick_config(object="jets"))       # doctest: +SKIP
>>> print(format_table(result))                                           # doctest: +SKIP
"""

from __future__ import annotations

from flashsim.bench.data import BenchData, prepare_bench_data
from flashsim.bench.report import format_table, plot, write_json
from flashsim.bench.run import BenchConfig, default_output_paths, run_benchmark

__all__ = [
    "BenchConfig",
    "BenchData",
    "default_output_paths",
    "format_table",
    "plot",
    "prepare_bench_data",
    "run_benchmark",
    "write_json",
]
