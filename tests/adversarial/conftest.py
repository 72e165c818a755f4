"""Fixtures of the adversarial suite: a forkserver whose children have rag_lfm imported, and small helpers."""

from __future__ import annotations

import multiprocessing as mp

import pytest


@pytest.fixture(scope="session")
def procs():
    """A multiprocessing context whose children fork from a server that imported rag_lfm and faiss.

    A fork from that server costs milliseconds (no interpreter start, no imports) and is safe:
    the server never started an OpenMP or BLAS thread pool.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["_scenarios", "faiss", "sqlalchemy.dialects.sqlite"])
    return ctx
