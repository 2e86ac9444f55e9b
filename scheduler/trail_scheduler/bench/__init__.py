"""Benchmarks on the real engine: workloads, load generator, engines, reports (``trail bench``)."""
