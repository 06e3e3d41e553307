"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from justrl_hpc import devcluster as _devcluster


@pytest.fixture(scope="session")
def devcluster() -> Iterator[_devcluster.ClusterStatus]:
    """A real Slurm on this machine (partition dev, nodes n1..n4), up once per test session.

    Taken down at the end only if a test session started it and no other live session still holds it; a
    cluster someone started with `justrl-hpc devcluster up` stays up. SLURM_CONF points at it meanwhile, so
    plain `sbatch` (submitit) reaches it even where /etc/slurm/slurm.conf belongs to something else.
    """
    with _devcluster.lease() as status:
        before = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(status.conf)
        try:
            yield status
        finally:
            if before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = before


@pytest.fixture(scope="session")
def rehearsal_data(tmp_path_factory):
    """The rehearsal's toy data and tiny base model, made once per session (~12 s)."""
    from justrl_hpc.rehearsal.prepare import prepare

    out = tmp_path_factory.mktemp("rehearsal-data")
    prepare(out)
    return out
