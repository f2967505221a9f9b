"""Shared test settings: non-interactive plotting, bounded hypothesis runs, quiet progress bars."""

from __future__ import annotations

import os
import warnings

import matplotlib
import pytest
from hypothesis import HealthCheck, settings

matplotlib.use("Agg")
os.environ.setdefault("SHADOWS_PROGRESS", "0")

# Bounded example counts keep CI within its time on 2 cores; `HYPOTHESIS_PROFILE=thorough` for more.
# `ci` is derandomized: every run draws the same examples, so that CI's verdict on a change does not depend on luck;
# `HYPOTHESIS_PROFILE=thorough` explores new ones.
settings.register_profile(
    "ci",
    max_examples=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _quiet_warnings():
    # anndata/zarr emit format-advice warnings on every write; they say nothing about shadows
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*zarr v3 autosharding.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
