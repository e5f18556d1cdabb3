"""Test support for langchain-hybrid-memory: real servers and fault injection, nothing mocked.

Installed with the project (`pip install -e ".[all]"` or `pip install .`; pyproject.toml maps this package from
`tests/hybrid_memory_testing/`), so tests and benchmarks import it from anywhere without touching `sys.path`:

* `servers`: private redis-server (single, TLS, Cluster, Sentinel) and PostgreSQL processes on free ports, that
  a test may kill, stop or restart;
* `tcp_proxy`: a TCP forwarder that can cut the network the way a silent partition does;
* `fake_openai`: a local server speaking the chat-completions protocol, for the real `openai` client;
* `faults`: the fault-injection suite (writer processes, the faults, the verdict), run by `tests/test_faults.py`
  and `benchmarks/fault_suite.py`.
"""
