"""Every notebook in `notebooks/` runs top to bottom, offline, against the real servers, and cleans up after
itself. Executed with nbclient on a kernel of this very interpreter (ipykernel)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

# Plain imports, no importorskip: a missing nbclient, ipykernel or matplotlib (extra `dev`) must fail CI, not
# skip the notebooks.
import ipykernel  # noqa: F401  - the kernel the notebooks run on
import matplotlib  # noqa: F401  - the notebooks plot
import nbclient
import nbformat
import pytest
import redis

from conftest import PG_URL, REDIS_URL, drop_namespace, pg_fetch

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell
NOTEBOOK_TIMEOUT = 240  # seconds per notebook (pytest-timeout)
MAX_OUTPUT_BYTES = 600_000  # what one executed notebook may print and plot


def test_there_are_the_three_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"langchain_memory", "llamaindex_memory", "hybrid_internals"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_offline(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    namespace = f"nb_test_{uuid.uuid4().hex[:10]}"
    # The kernel inherits this environment: the servers, the notebook's namespace, and no way to reach OpenAI.
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("NOTEBOOK_NAMESPACE", namespace)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # a call would fail fast, not go out
    nb = nbformat.read(path, as_version=4)
    # No kernelspec search: ipykernel's native "python3" spec is this interpreter (the venv under test).
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert errors == []
        size = sum(len(json.dumps(c.outputs)) for c in nb.cells if c.cell_type == "code")
        assert size < MAX_OUTPUT_BYTES, f"{path.name} produced {size} bytes of output"
        # The notebook deleted its namespace itself: no schema, no Redis key.
        assert not pg_fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", namespace)
        assert list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"{namespace}:*", count=1000)) == []
    finally:
        drop_namespace(namespace)
