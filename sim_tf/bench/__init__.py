"""Measuring sim-tf: the benchmark suite, comparisons of its reports, compute-only step times and profiles."""
