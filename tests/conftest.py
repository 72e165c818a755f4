"""Shared fixtures: tiny deterministic embedder, temp indexes, the real database servers."""

from __future__ import annotations

import os
import uuid

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Spec signing keys and trust lists live in the user's config dir: the tests keep their own, away from ~/.config.
os.environ.setdefault("RAG_LFM_CONFIG_DIR", __import__("tempfile").mkdtemp(prefix="rag-lfm-test-config-"))

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


def reachable_or_skip(url: str) -> str:
    """Return ``url`` if its server answers; else skip (or fail when RAG_LFM_REQUIRE_SERVICES=1, as on CI)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver or connection error means the server is not there
        msg = f"{url} unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        if os.environ.get("RAG_LFM_REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " (RAG_LFM_REQUIRE_SERVICES=1: CI must run the SQL tests)")
        pytest.skip(msg)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def docstore_url(request, tmp_path):
    """A doc store URL for each SQL backend (None = the default SQLite file in the index dir)."""
    if request.param == "sqlite":
        return None
    request.applymarker(pytest.mark.services)
    return reachable_or_skip(PG_URL if request.param == "postgresql" else MARIADB_URL)


@pytest.fixture(scope="session")
def minilm_path():
    from rag_lfm.models import resolve_model

    return resolve_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def procs():
    """A multiprocessing context whose children fork from a server that imported rag_lfm and faiss
    (tests/adversarial): a child costs a fork, not an interpreter start, and the server never started
    an OpenMP or BLAS thread pool, so forking it is safe."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["_scenarios", "faiss", "sqlalchemy.dialects.sqlite"])
    return ctx
