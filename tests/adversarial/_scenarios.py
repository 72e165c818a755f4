"""Code the adversarial tests run in real child processes (imported by the children, not by pytest alone).

Children are forked from a multiprocessing forkserver that has imported rag_lfm and faiss
but never run a search, so a child costs a fork, not an interpreter start (the crash matrix
runs dozens of them). Each function takes plain arguments and reports through its exit
code and a queue.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase

DIM = 32


def docs(n: int, *, start: int = 0, round_: int = 0, source_tag: str = "") -> list[Document]:
    """``n`` small documents ``d<i>`` with distinct words; ``round_`` changes every text (an update)."""
    rng = np.random.default_rng(start + 7919 * round_)
    words = [f"w{i}" for i in range(200)]
    return [
        Document(f"{source_tag}d{i}", f"{' '.join(rng.choice(words, 12))} unique{source_tag}{i} round{round_}", {"n": i, "round": round_})
        for i in range(start, start + n)
    ]


def open_or_create(path: str, url: str | None, prefix: str) -> KnowledgeBase:
    return KnowledgeBase.open_or_create(path, embedder=HashEmbedder(DIM), docstore=url, table_prefix=prefix)


def run(ctx: Any, target: Any, *args: Any, timeout: float = 60.0) -> tuple[int, list[Any]]:
    """Run ``target(*args, queue)`` in a child of ``ctx``; return (exit code, the messages it queued)."""
    import queue as queue_mod

    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError(f"child {target.__name__} did not finish in {timeout} s")
    out = []
    while True:
        try:
            out.append(q.get(timeout=0.05))
        except queue_mod.Empty:
            return p.exitcode, out


# -- fault injection ---------------------------------------------------------------------
class Faults:
    """Counts the durable steps of a write (file renames and removals, SQL commits) and SIGKILLs
    the process at step ``kill_at`` (``when`` = "before" or "after" it). Works on any version
    of the code: it patches the OS and driver calls, not rag-lfm's internals."""

    def __init__(self, kill_at: int, when: str) -> None:
        self.kill_at, self.when, self.n = kill_at, when, 0
        self.events: list[str] = []

    def step(self, name: str, call: Any) -> Any:
        self.n += 1
        self.events.append(name)
        if self.n == self.kill_at and self.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = call()
        if self.n == self.kill_at and self.when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    def install(self) -> None:
        from sqlalchemy.engine.default import DefaultDialect

        real_replace, real_unlink = os.replace, os.unlink
        real_commit = DefaultDialect.do_commit
        os.replace = lambda a, b, **kw: self.step(f"replace {Path(b).name}", lambda: real_replace(a, b, **kw))  # type: ignore[assignment]
        os.unlink = lambda p, **kw: self.step(f"unlink {Path(p).name}", lambda: real_unlink(p, **kw))  # type: ignore[assignment]
        DefaultDialect.do_commit = lambda dialect, conn: self.step("sql commit", lambda: real_commit(dialect, conn))  # type: ignore[method-assign]


def crash_workload(path: str, url: str | None, prefix: str, kill_at: int, when: str, queue: Any) -> None:
    """Create an index, ingest 20 documents in 2 commits, update 5 and add 5, delete 3; die at step ``kill_at``."""
    faults = Faults(kill_at, when)
    faults.install()
    kb = open_or_create(path, url, prefix)
    run_workload(kb)
    queue.put(("done", faults.n, faults.events))


def run_workload(kb: KnowledgeBase) -> None:
    kb.ingest(InMemory(docs(20), name="s"), commit_every=10, progress=False)
    kb.ingest(InMemory(docs(5, round_=1) + docs(20)[5:] + docs(5, start=20), name="s"), commit_every=10, progress=False)
    kb.delete(["d20", "d21", "d22"], source="s")


def final_texts() -> dict[str, str]:
    """The documents the workload leaves, id -> text."""
    out = {d.id: d.text for d in docs(5, round_=1) + docs(20)[5:] + docs(5, start=20)}
    for gone in ("d20", "d21", "d22"):
        del out[gone]
    return out


# -- writers and readers racing ----------------------------------------------------------
def writer(path: str, url: str | None, prefix: str, source: str, n: int, commit_every: int, queue: Any) -> None:
    """Ingest ``n`` documents of its own source through a handle opened before the other writer commits."""
    kb = KnowledgeBase.open(path, docstore=url)
    queue.put(("opened", source))
    time.sleep(0.3)  # both handles are open before either writes: each is stale when the other commits
    try:
        report = kb.ingest(InMemory(docs(n, source_tag=source), name=source), commit_every=commit_every, progress=False)
        queue.put(("done", source, report.added))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with the message
        queue.put(("error", source, f"{type(exc).__name__}: {exc}"))


def updater(path: str, rounds: int, n: int, queue: Any) -> None:
    """Rewrite the same ``n`` documents ``rounds`` times, one commit per round (each deletes and adds n chunks)."""
    kb = KnowledgeBase.open(path)
    queue.put(("started",))
    for r in range(1, rounds + 1):
        kb.ingest(InMemory(docs(n, round_=r), name="s"), commit_every=n, progress=False)
    queue.put(("done", rounds))


# -- resources ------------------------------------------------------------------------
def _limit_memory(extra: int) -> None:
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))


def huge_k_searches(path: str, huge_k: int, extra: int, queue: Any) -> None:
    """Every search entry point with k = 1e9, under a memory limit; queues the number of hits of each."""
    from rag_lfm.retrieval import Retriever

    kb = KnowledgeBase.open(path)
    bm25 = Retriever(kb, method="bm25")
    _ = bm25.bm25_indexes  # built before the limit: building it is not what is measured
    _limit_memory(extra)
    out = {
        "search": len(kb.search("w1 w2", k=huge_k)),
        "search_filter": len(kb.search("w1 w2", k=huge_k, filter={"n": {"$lt": 100}})),
        "search_vectors": kb.search_vectors(kb.embedder.encode(["w1"]), huge_k)[1].shape[1],
        "retriever_dense": len(Retriever(kb).search("w1 w2", k=huge_k)),
        "retriever_metric": len(Retriever(kb, metric="l2").search("w1 w2", k=huge_k)),
        "retriever_bm25": len(bm25.search("w1 w2", k=huge_k)),
        "retriever_hybrid": len(Retriever(kb, method="hybrid").search("w1 w2", k=huge_k)),
    }
    queue.put(out)


# -- a local HTTP server ------------------------------------------------------------------
class Server:
    """A threaded HTTP server on ``host`` (any loopback address) serving ``routes``.

    ``routes`` maps a path to (status, headers, body). ``hits`` counts requests per path,
    ``auth`` records each request's Authorization header.
    """

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], host: str = "127.0.0.1") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes, self.hits, self.auth = routes, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                server.hits[path] = server.hits.get(path, 0) + 1
                server.auth.append(self.headers.get("Authorization"))
                status, headers, body = server.routes.get(path, (404, {}, b"not found"))
                body = body.replace(b"{base}", server.base.encode())
                self.send_response(status)
                headers = {"Content-Type": "text/html; charset=utf-8", **headers, "Content-Length": str(len(body))}
                for k, v in headers.items():
                    self.send_header(k, v.replace("{base}", server.base))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.base = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page(title: str, words: str) -> bytes:
    body = f"<p>{words} {words} {words}</p>" * 3
    return f"<!doctype html><html><head><title>{title}</title></head><body><article><h1>{title}</h1>{body}</article></body></html>".encode()
