"""Helpers of `benchmarks/bench_compare.py`: the subjects (ours, competitors, raw floors), the time-bounded
interleaved runner, the mixed-load driver and the report (tables, markdown, plot)."""
