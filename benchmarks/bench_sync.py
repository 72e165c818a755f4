"""Sync after a 1% edit vs a full rebuild vs LangChain's incremental indexing, in one run.

The source is a SQL table (SQLite file, or PostgreSQL with --source postgres) of the first
N wiki-vital leads (id = title, text = the lead, metadata title/description/topic), read by
rag-lfm's SqlConnector. After the initial index, 1% of the rows get an extra sentence,
then three ways of bringing an index up to date are timed on the same edited table:

- ours:      ``kb.sync(connector)``: reads every row, skips unchanged documents by content
             hash, re-chunks and re-embeds only what changed, commits.
- rebuild:   a fresh ``KnowledgeBase`` ingesting the edited table from scratch.
- langchain: ``langchain_core.indexing.index(docs, SQLRecordManager, FAISS vector store,
             cleanup="incremental", source_id_key="source")`` -- LangChain's own incremental
             indexing API -- fed the same rows, cut into the same chunks by our chunker (so both
             sides embed and store the same vectors), read through the same connector.

Both incremental sides use the same embedder. With ``--embedder minilm`` (the default,
all-MiniLM-L6-v2 on the CPU) the *initial* states are built from the vectors already stored
in ``indexes/wiki-vital`` (``--cache-from``) so no untimed phase re-encodes 10k leads; every
timed phase encodes with the plain model (no cache). ``--embedder hash`` uses the
deterministic hashing embedder everywhere (isolates the bookkeeping cost).

    python benchmarks/bench_sync.py --size L            # 10,000 docs, real MiniLM (~8 min on 2 cores)
    python benchmarks/bench_sync.py --size S --embedder hash --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

SIZES = {"S": 1_000, "M": 3_000, "L": 10_000}
EDIT_SENTENCE = " This lead was revised for the synchronisation benchmark."


class CountingEmbedder:
    """Wraps an embedder: counts the texts it encodes; optionally answers from a vector cache.

    The cache (chunk text -> stored vector of indexes/wiki-vital) is only switched on for the
    untimed initial builds.
    """

    def __init__(self, inner, cache: dict[str, np.ndarray] | None = None) -> None:
        self.inner = inner
        self.cache = cache
        self.calls = 0
        self.name, self.dim, self.normalize = inner.name, inner.dim, inner.normalize
        self.tokenizer, self.max_tokens = inner.tokenizer, inner.max_tokens
        self.backend = getattr(inner, "backend", None)

    def encode(self, texts, *, kind="document", batch_size=None):
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        todo = [i for i, t in enumerate(texts) if self.cache is None or t not in self.cache]
        for i, t in enumerate(texts):
            if self.cache is not None and t in self.cache:
                out[i] = self.cache[t]
        if todo:
            self.calls += len(todo)
            out[todo] = self.inner.encode([texts[i] for i in todo], kind=kind)
        return out


def lc_embeddings(emb):
    from langchain_core.embeddings import Embeddings

    class _E(Embeddings):
        def embed_documents(self, texts):
            return emb.encode(list(texts), kind="document").tolist()

        def embed_query(self, text):
            return emb.encode([text], kind="query")[0].tolist()

    return _E()


def make_source(url: str, table: str, n: int) -> list[dict]:
    import sqlalchemy as sa

    from rag_lfm.connectors.wiki import load_wiki_vital

    seen, rows = set(), []
    for e in load_wiki_vital():
        if e.get("title") and e.get("extract") and e["title"] not in seen:
            seen.add(e["title"])
            rows.append({"title": e["title"], "extract": e["extract"], "description": e.get("description") or "",
                         "topic": e.get("topic") or ""})
        if len(rows) == n:
            break
    engine = sa.create_engine(url)
    md = sa.MetaData()
    t = sa.Table(table, md, sa.Column("title", sa.String(300), primary_key=True), sa.Column("extract", sa.Text),
                 sa.Column("description", sa.Text), sa.Column("topic", sa.String(100)))
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
    engine.dispose()
    return rows


def edit_source(url: str, table: str, rows: list[dict], frac: float, seed: int) -> list[str]:
    import sqlalchemy as sa

    rng = np.random.default_rng(seed)
    k = max(1, round(len(rows) * frac))
    picked = sorted(rows[i]["title"] for i in rng.choice(len(rows), k, replace=False))
    engine = sa.create_engine(url)
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        for title in picked:
            conn.execute(t.update().where(t.c.title == title).values(extract=t.c.extract + EDIT_SENTENCE))
    engine.dispose()
    return picked


def connector(url: str, table: str):
    from rag_lfm.connectors.sql import SqlConnector

    return SqlConnector(url=url, table=table, id_column="title", text_columns=["extract"],
                        metadata_columns=["title", "description", "topic"], name="bench:wiki", batch_size=1000)


def lc_docs(conn, chunker):
    """The connector's documents cut by our chunker, as LangChain Documents (source = doc id)."""
    from langchain_core.documents import Document as LCDoc

    from rag_lfm.types import Document

    for d in conn.iter_documents():
        if isinstance(d, Document):
            for c in chunker.split(conn.source_id, d.id, d.text):
                yield LCDoc(page_content=c.text, metadata={**d.metadata, "source": d.id})


def load_cache(path: Path) -> dict[str, np.ndarray]:
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(path)
    cache: dict[str, np.ndarray] = {}
    for batch in kb.iter_chunks(5000):
        vecs = kb.vectors([h.chunk_id for h in batch])
        cache.update((h.text, v) for h, v in zip(batch, vecs))
    kb.close()
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="L", help="S=1,000  M=3,000  L=10,000 documents")
    ap.add_argument("--n", type=int, default=None, help="number of documents (overrides --size)")
    ap.add_argument("--edit-frac", type=float, default=0.01, help="share of documents edited")
    ap.add_argument("--embedder", choices=["minilm", "hash"], default="minilm")
    ap.add_argument("--source", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--cache-from", default="indexes/wiki-vital", help="index whose stored vectors build the initial states")
    ap.add_argument("--skip-rebuild", action="store_true", help="do not time the full rebuild")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where indexes are built (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: one JSON object of the figures")
    args = ap.parse_args()
    n = args.n or SIZES[args.size]
    print("args:", vars(args) | {"n": n}, flush=True)

    from langchain_classic.indexes import SQLRecordManager
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS as LCFAISS
    from langchain_core.indexing import index as lc_index

    import faiss

    from rag_lfm import HashEmbedder, KnowledgeBase
    from rag_lfm.embedders import make_embedder

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    table = "bench_sync_wiki"
    url = (f"sqlite:///{work / 'source.db'}" if args.source == "sqlite"
           else "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        t0 = time.perf_counter()
        rows = make_source(url, table, n)
        n = len(rows)
        print(f"source: {n} rows in {args.source} table {table} ({time.perf_counter() - t0:.1f} s)", flush=True)

        if args.embedder == "hash":
            base = HashEmbedder(384)
            cache = None
        else:
            base = make_embedder("all-MiniLM-L6-v2")
            base.encode(["warm-up"] * 8, kind="document")  # model load is not part of any timing
            cache = load_cache(Path(args.cache_from)) if Path(args.cache_from, "manifest.json").exists() else None
            print(f"vector cache for the initial states: {len(cache) if cache else 0} chunks from {args.cache_from}",
                  flush=True)

        # -- initial states (untimed) ----------------------------------------------------------
        t0 = time.perf_counter()
        init_emb = CountingEmbedder(base, cache)
        kb = KnowledgeBase.create(work / "ours", embedder=init_emb)
        kb.sync(connector(url, table), progress=False)
        chunker = kb.chunker
        lc_init_emb = CountingEmbedder(base, cache)
        store = LCFAISS(embedding_function=lc_embeddings(lc_init_emb), index=faiss.IndexFlatIP(base.dim),
                        docstore=InMemoryDocstore(), index_to_docstore_id={})
        rm = SQLRecordManager("bench", db_url=f"sqlite:///{work / 'lc-records.sqlite'}")
        rm.create_schema()
        lc_first = lc_index(lc_docs(connector(url, table), chunker), rm, store, cleanup="incremental",
                            source_id_key="source", key_encoder="sha256")
        print(f"initial states built in {time.perf_counter() - t0:.1f} s (ours: {len(kb)} chunks; langchain: "
              f"{lc_first}; texts encoded without cache: {init_emb.calls + lc_init_emb.calls})", flush=True)

        edited = edit_source(url, table, rows, args.edit_frac, args.seed)
        print(f"edited {len(edited)} documents ({100 * len(edited) / n:.2f}%)", flush=True)

        # -- ours: sync ------------------------------------------------------------------------
        ours_emb = CountingEmbedder(base)
        kb.embedder = ours_emb
        t0 = time.perf_counter()
        rep = kb.sync(connector(url, table), progress=False)
        t_ours = time.perf_counter() - t0
        print(f"ours      sync      {t_ours:8.2f} s  embedded {ours_emb.calls:6d}  "
              f"(updated {rep.updated}, unchanged {rep.unchanged}, deleted {rep.deleted}, commits {rep.commits})",
              flush=True)

        # -- langchain: index(), incremental cleanup -------------------------------------------
        lc_emb = CountingEmbedder(base)
        store.embedding_function = lc_embeddings(lc_emb)
        t0 = time.perf_counter()
        # index() dedups split documents, so every row is read and split before it can compare hashes
        docs = list(lc_docs(connector(url, table), chunker))
        t_lc_docs = time.perf_counter() - t0
        lc_rep = lc_index(docs, rm, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
        t_lc = time.perf_counter() - t0
        print(f"langchain index()   {t_lc:8.2f} s  embedded {lc_emb.calls:6d}  (read+split {t_lc_docs:.2f} s, "
              f"index() {t_lc - t_lc_docs:.2f} s: {lc_rep})", flush=True)

        # -- full rebuild ----------------------------------------------------------------------
        t_rebuild, rebuild_calls, same = None, None, None
        if not args.skip_rebuild:
            rb_emb = CountingEmbedder(base)
            t0 = time.perf_counter()
            fresh = KnowledgeBase.create(work / "rebuild", embedder=rb_emb)
            fresh.ingest(connector(url, table), progress=False)
            t_rebuild = time.perf_counter() - t0
            rebuild_calls = rb_emb.calls
            print(f"ours      rebuild   {t_rebuild:8.2f} s  embedded {rebuild_calls:6d}", flush=True)
            a = sorted((h.chunk_id, h.text) for b in kb.iter_chunks(5000) for h in b)
            b_ = sorted((h.chunk_id, h.text) for b in fresh.iter_chunks(5000) for h in b)
            same = a == b_
            print(f"synced index == rebuilt index (chunk ids and texts): {same}", flush=True)

        print()
        print(f"{'':12s}{'seconds':>10s}{'embedded':>10s}")
        print(f"{'ours sync':12s}{t_ours:10.2f}{ours_emb.calls:10d}")
        print(f"{'langchain':12s}{t_lc:10.2f}{lc_emb.calls:10d}")
        if t_rebuild is not None:
            print(f"{'rebuild':12s}{t_rebuild:10.2f}{rebuild_calls:10d}")
            print(f"rebuild / sync  = {t_rebuild / t_ours:6.1f}x   (target >= 20x)")
        print(f"langchain / sync = {t_lc / t_ours:6.2f}x   (target >= 1.5x)")
        figures = {
            "n_docs": n, "n_chunks": len(kb), "edited_docs": len(edited), "embedder": args.embedder,
            "source": args.source, "sync_s": round(t_ours, 3), "sync_embedded": ours_emb.calls,
            "langchain_s": round(t_lc, 3), "langchain_read_split_s": round(t_lc_docs, 3),
            "langchain_embedded": lc_emb.calls,
            "rebuild_s": None if t_rebuild is None else round(t_rebuild, 3), "rebuild_embedded": rebuild_calls,
            "rebuild_over_sync": None if t_rebuild is None else round(t_rebuild / t_ours, 2),
            "langchain_over_sync": round(t_lc / t_ours, 2), "sync_equals_rebuild": same,
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": sys.version.split()[0],
        }
        if args.json:
            print(json.dumps(figures))
    finally:
        if args.source == "postgres":
            import sqlalchemy as sa

            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            engine.dispose()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
