"""WebConnector against a local HTTP server the test starts on 127.0.0.1 (no other address)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rag_lfm.connectors.base import make_connector
from rag_lfm.connectors.web import WebConnector, normalize_url
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.types import Document, Skipped

LOCAL = ["127.0.0.1"]  # the test server's address, refused by the default network policy

LOREM = (
    "The Seine is a 777-kilometre-long river in northern France. Its drainage basin is in the Paris Basin "
    "covering most of northern France. It rises at Source-Seine, 30 kilometres northwest of Dijon in "
    "northeastern France in the Langres plateau, flowing through Paris and into the English Channel at Le Havre."
)


def page(title: str, body: str, canonical: str | None = None) -> str:
    link = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    return (
        f"<!doctype html><html><head><title>{title}</title>{link}</head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | Menu Menu Menu</nav>"
        f"<article><h1>{title}</h1><p>{body}</p><p>{body}</p></article>"
        "<footer>Copyright 2026 Example Footer Ltd. All rights reserved.</footer></body></html>"
    )


class Site:
    """Routes of the test server; ``pages`` may be edited between runs."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {
            "/a": page("River Seine", LOREM),
            "/b": page("Loire", LOREM.replace("Seine", "Loire"), canonical="/b-canonical"),
            "/c": page("Rhone", LOREM.replace("Seine", "Rhone")),
        }
        self.etag_version: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.not_modified: dict[str, int] = {}
        self.lock = threading.Lock()
        self.fail_500: set[str] = set()


def make_handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", headers=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test): expected

        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path
            with site.lock:
                site.hits[path] = site.hits.get(path, 0) + 1
            host = f"http://127.0.0.1:{self.server.server_address[1]}"
            if path in site.fail_500:
                return self._send(500, b"boom")
            if path in site.pages:
                html = site.pages[path].encode()
                etag = f'"{hash(html) & 0xFFFFFFFF:x}"'
                lm = formatdate(1_700_000_000, usegmt=True)
                if self.headers.get("If-None-Match") == etag:
                    with site.lock:
                        site.not_modified[path] = site.not_modified.get(path, 0) + 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._send(200, html, headers={"ETag": etag, "Last-Modified": lm})
            if path == "/moved":
                return self._send(301, b"", headers={"Location": "/a"})
            if path == "/loop":
                return self._send(302, b"", headers={"Location": "/loop2"})
            if path == "/loop2":
                return self._send(302, b"", headers={"Location": "/loop"})
            if path == "/doc.pdf":
                return self._send(200, b"%PDF-1.4 not really", ctype="application/pdf")
            if path == "/notes.txt":
                return self._send(200, "plain notes 😀".encode(), ctype="text/plain; charset=utf-8")
            if path == "/slow":
                time.sleep(1.5)
                return self._send(200, page("slow", LOREM).encode())
            if path == "/empty":
                return self._send(200, b"<html><body></body></html>")
            if path == "/big":
                return self._send(200, b"<html>" + b"x" * 50_000 + b"</html>")
            if path == "/sitemap.xml":
                urls = "".join(f"<url><loc>{host}{p}</loc><lastmod>2026-11-01</lastmod></url>" for p in sorted(site.pages))
                body = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
                return self._send(200, body.encode(), ctype="application/xml")
            if path == "/index.xml.gz":
                body = (f'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                        f"<sitemap><loc>{host}/sitemap.xml</loc></sitemap></sitemapindex>")
                return self._send(200, gzip.compress(body.encode()), ctype="application/gzip")
            if path == "/bad-sitemap.xml":
                return self._send(200, b"<urlset><url><loc>unclosed", ctype="application/xml")
            return self._send(404, b"not found")

    return Handler


@pytest.fixture
def server():
    site = Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, site
    httpd.shutdown()
    httpd.server_close()


def split(items):
    docs = [i for i in items if isinstance(i, Document)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    return docs, skipped


def test_main_text_canonical_ids_and_per_url_failures(server):
    base, _site = server
    urls = [f"{base}{p}" for p in ["/a", "/b", "/moved", "/missing", "/loop", "/doc.pdf", "/notes.txt",
                                    "/slow", "/empty", "/big"]]
    web = WebConnector(urls=urls, allow_hosts=LOCAL, timeout_s=0.5, max_redirects=3, max_bytes=20_000, name="site")
    docs, skipped = split(list(web.iter_documents()))
    by_id = {d.id: d for d in docs}
    # /b declares a canonical URL; /moved redirects to /a, which is kept once
    assert set(by_id) == {f"{base}/a", f"{base}/b-canonical", f"{base}/notes.txt"}
    a = by_id[f"{base}/a"]
    assert "777-kilometre-long river" in a.text
    assert "Copyright" not in a.text and "Menu" not in a.text  # boilerplate removed
    assert a.metadata["title"] == "River Seine" and a.metadata["url"] == f"{base}/a"
    assert a.metadata["last_modified"].endswith("GMT")
    assert by_id[f"{base}/notes.txt"].text == "plain notes 😀"
    reasons = {s.ref.replace(base, ""): s.reason for s in skipped}
    assert "HTTP 404" in reasons["/missing"]
    assert "max_redirects=3" in reasons["/loop"]
    assert "application/pdf" in reasons["/doc.pdf"] and "pdf connector" in reasons["/doc.pdf"]
    assert "timed out" in reasons["/slow"]
    assert "no main text" in reasons["/empty"]
    assert "max_bytes" in reasons["/big"]
    assert any("same canonical URL" in r for r in reasons.values())  # /moved == /a
    # four downloads: /a, /b, /notes.txt and /moved (which turned out to be /a again)
    assert web.stats == {"fetched": 4, "not_modified": 0, "skipped": len(skipped)}


def test_sitemap_and_gzipped_sitemap_index(server):
    base, _ = server
    flat = WebConnector(sitemap=f"{base}/sitemap.xml", allow_hosts=LOCAL)
    docs, skipped = split(list(flat.iter_documents()))
    assert skipped == []
    assert sorted(d.id for d in docs) == [f"{base}/a", f"{base}/b-canonical", f"{base}/c"]
    assert all(d.metadata["lastmod"] == "2026-11-01" for d in docs)
    assert flat.source_id == "web:127.0.0.1:" + base.rsplit(":", 1)[1] and flat.complete
    nested = make_connector("web", sitemap=f"{base}/index.xml.gz", allow_hosts=LOCAL)
    assert sorted(d.id for d in nested.iter_documents()) == sorted(d.id for d in docs)


def test_unreadable_sitemap_stops_the_source(server):
    base, site = server
    with pytest.raises(SourceError, match="HTTP 404"):
        list(WebConnector(sitemap=f"{base}/nope.xml", allow_hosts=LOCAL).iter_documents())
    with pytest.raises(SourceError, match="not valid XML"):
        list(WebConnector(sitemap=f"{base}/bad-sitemap.xml", allow_hosts=LOCAL).iter_documents())
    site.fail_500.add("/sitemap.xml")
    with pytest.raises(SourceError, match="HTTP 500.*nothing was changed"):
        list(WebConnector(sitemap=f"{base}/sitemap.xml", allow_hosts=LOCAL).iter_documents())


def test_etag_cache_avoids_refetching_and_500_is_reported(server, tmp_path):
    base, site = server
    cache = tmp_path / "web-cache.json"
    first = WebConnector(sitemap=f"{base}/sitemap.xml", allow_hosts=LOCAL, cache_path=str(cache))
    docs1, _ = split(list(first.iter_documents()))
    assert first.stats["fetched"] == 3 and cache.exists()
    stored = json.loads(cache.read_text())
    assert stored[f"{base}/b"]["id"] == f"{base}/b-canonical" and stored[f"{base}/a"]["etag"]

    site.pages["/c"] = page("Rhone", "The Rhone is a major river of Europe, rising in the Swiss Alps. " * 3)
    second = WebConnector(sitemap=f"{base}/sitemap.xml", allow_hosts=LOCAL, cache_path=str(cache))
    docs2, skipped2 = split(list(second.iter_documents()))
    assert skipped2 == []
    assert second.stats == {"fetched": 1, "not_modified": 2, "skipped": 0}
    assert site.not_modified == {"/a": 1, "/b": 1}
    # unchanged pages come back identical (same content hash -> a sync skips them), the edit is new
    h1 = {d.id: d.content_hash for d in docs1}
    h2 = {d.id: d.content_hash for d in docs2}
    assert h2[f"{base}/a"] == h1[f"{base}/a"] and h2[f"{base}/b-canonical"] == h1[f"{base}/b-canonical"]
    assert h2[f"{base}/c"] != h1[f"{base}/c"]

    # a server error on one page is reported under the id that page had, the others go on
    site.fail_500.add("/a")
    third = WebConnector(sitemap=f"{base}/sitemap.xml", allow_hosts=LOCAL, validators=second.validators)
    docs3, skipped3 = split(list(third.iter_documents()))
    assert [(s.ref, "HTTP 500" in s.reason) for s in skipped3] == [(f"{base}/a", True)]
    assert len(docs3) == 2


def test_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="needs urls"):
        WebConnector()
    with pytest.raises(ConfigError, match="'ftp://x/y' is not an absolute http"):
        WebConnector(urls=["ftp://x/y"])
    with pytest.raises(ConfigError, match="timeout_s=0"):
        WebConnector(urls=["http://127.0.0.1/"], timeout_s=0)


def test_normalize_url():
    assert normalize_url("HTTP://Example.ORG:80/a?x=1#frag") == "http://example.org/a?x=1"
    assert normalize_url("https://example.org:8443") == "https://example.org:8443/"


def test_describe_rebuilds_the_connector(tmp_path):
    from rag_lfm.connectors.spec import connector_from_source

    w = WebConnector(sitemap="http://127.0.0.1:1/sitemap.xml", name="s", cache_path=str(tmp_path / "c.json"),
                     timeout_s=3)
    again = connector_from_source(w.describe())
    assert (again.source_id, again.sitemap, again.timeout_s, again.cache_path) == ("s", w.sitemap, 3.0, w.cache_path)
