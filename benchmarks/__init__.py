"""Benchmarks (``make bench``); results and machines in docs/benchmarks.md."""

import services  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch or numba start a thread pool)
