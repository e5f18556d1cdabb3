"""Packaging: what pyproject.toml tells setuptools to ship exists, so an install carries every data file."""

from __future__ import annotations


def test_package_data_names_files_that_exist():
    """Every package-data pattern in pyproject.toml matches a file (a pattern matching nothing ships nothing)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        for pattern in patterns:
            assert list((root / package).glob(pattern)), f"{package}/{pattern} matches no file"
    lua = {p.stem for p in (root / "langchain_hybrid_memory" / "cache" / "lua").glob("*.lua")}
    assert {"common", "append", "fill", "read", "set_summary", "outbox_of"} <= lua
