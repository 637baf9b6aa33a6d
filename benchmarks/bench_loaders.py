"""Scenario: load-only throughput of every loader kind on the same rows.

The numbers in ``benchmarks/loaders.md`` come from::

    python benchmarks/bench_loaders.py --rows 2000000 --data benchmarks/out/data \
        --rounds 3 --original-batches 100

The harness is :mod:`flashsim.bench.epochs` (``python -m flashsim.bench.epochs`` is the
same command); ``--help`` lists the options.
"""

from flashsim.bench.epochs import main

if __name__ == "__main__":
    main()
