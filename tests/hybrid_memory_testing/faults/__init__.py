"""The fault-injection suite: writer processes on real servers, faults injected by the parent, and a verdict.

`harness.py` holds the machinery (writers, checks, the table), `scenarios.py` the faults,
`writer.py` the writer process. `tests/test_faults.py` runs them under pytest; `benchmarks/fault_suite.py`
runs them standalone and prints the table.
"""
