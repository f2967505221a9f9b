"""The oracle of the collection tests: ``anndata.concat`` of the files read into memory, beside ``shadows.concat``."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import pytest
from hypothesis import reject
from oracle import read_oracle

import shadows

_counter = iter(range(10**9))


def oracle(paths: list[str], **kw) -> ad.AnnData:
    """``anndata.concat`` of the files at ``paths`` read into memory, with the keyword arguments ``kw``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.concat([read_oracle(p) for p in paths], **kw)


def open_both(paths: list[str], kw: dict):
    """``(collection, anndata.concat)``; if anndata refuses the files, the collection must refuse them too."""
    try:
        want = oracle(paths, **kw)
    except Exception:  # noqa: BLE001 - whatever anndata refuses, shadows must refuse
        with pytest.raises(Exception):  # noqa: B017, PT011
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                shadows.concat(paths, **kw).to_memory()
        reject()  # anndata refuses these files (e.g. columns it cannot unify): so did the collection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = shadows.concat(paths, **kw)
    return got, want


def case_dir(tmp_path: Path) -> Path:
    """A new directory name under ``tmp_path`` for one hypothesis example (examples share the test's tmp_path)."""
    return tmp_path / f"case{next(_counter)}"
