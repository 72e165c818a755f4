"""Web connector: a list of URLs or a sitemap, fetched over HTTP, main text extracted.

Each page becomes a Document whose id is its canonical URL (``<link rel="canonical">``
when the page declares one, else the URL after redirects, normalised), whose text is
the main content extracted by trafilatura (navigation, footers and ads dropped) and
whose metadata holds the title, the fetched URL, the HTTP ``Last-Modified`` and the
sitemap's ``lastmod``.

Conditional requests: with a ``cache_path`` (a JSON file) the connector remembers, per
URL, the ``ETag``/``Last-Modified`` validators and the extracted page; the next run sends
``If-None-Match``/``If-Modified-Since`` and, on ``304 Not Modified``, yields the cached
Document without downloading or extracting the page again (the sync then skips it by
content hash). The same cache can be passed in and read back as a dict (``validators=``
and the ``validators`` attribute).

Failures are per URL: a timeout, too many redirects, a non-HTML content type, a 4xx or
5xx status or a page without extractable text is yielded as ``Skipped(ref, reason)`` and
the other URLs go on. ``ref`` is the id the page had at its last good fetch (its canonical
URL), so a sync keeps that last good version instead of deleting it on a transient error;
a page is deleted from the index when it leaves the URL list or the sitemap. Only an
unreadable *sitemap* stops the source (``SourceError``), as then the connector can't know
which pages exist, and the index is left as it was.

Network policy (SSRF protection): a URL list or a sitemap comes from outside, and a page
can redirect anywhere, so the connector connects only to public (global unicast)
addresses by default. Loopback, private (RFC 1918, unique-local), link-local (with cloud
metadata endpoints such as 169.254.169.254), shared, multicast, reserved and unspecified
addresses are refused -- for the first URL, after every redirect and for every sitemap
entry -- and the refused page is reported as Skipped with the reason. The check runs on
the addresses the host name resolves to, at connection time (a DNS answer that changes
between a check and the connection cannot slip through). ``allow_hosts=["intranet.example",
"10.0.0.0/8"]`` opens named hosts or networks; ``allow_private=True`` opens every
non-public address. Credentials in URLs are used for the request but never kept in doc
ids, metadata, the cache file or messages.

Example:
    >>> web = WebConnector(sitemap="https://docs.example.org/sitemap.xml",
    ...                    cache_path="indexes/docs/web-cache.json")   # doctest: +SKIP
    >>> kb.sync(web)                                                    # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError, NetworkPolicyError, SourceError
from rag_lfm.redaction import redact
from rag_lfm.types import Document, Skipped

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("text/plain",)
_SITEMAP_NS = "{http://www.sitemaps.org/schemas/sitemap/0.9}"


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"the web connector needs {module!r}, which is not installed; run: pip install 'rag-lfm[{extra}]'"
        ) from exc


def normalize_url(url: str) -> str:
    """Canonical form of an absolute http(s) URL: lower-case scheme and host, no default
    port, no fragment, ``/`` for an empty path, no credentials (user info is dropped and
    secret query parameters are masked: the result becomes a doc id, shown to users).

    Example:
        >>> normalize_url("HTTP://user:pw@Example.org:80/a?token=t&q=1#top")
        'http://example.org/a?token=***&q=1'
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    return redact(urlunsplit((scheme, host, parts.path or "/", parts.query, "")))


def _public_url(url: str) -> str:
    """``url`` without user info and with secret query values masked (for metadata and messages)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return redact(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


_DENIED = (  # most specific first: Python counts 0.0.0.0/8 and 240.0.0.0/4 as private too
    ("is_unspecified", "the unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address (cloud metadata endpoints live there)"),
    ("is_multicast", "a multicast address"),
    ("is_reserved", "a reserved address"),
    ("is_private", "a private-network address"),
)


class NetworkPolicy:
    """Which addresses the web connector may connect to (see the module docstring).

    Args:
        allow_hosts: host names (exact, or ``*.example.org`` for subdomains), IP addresses or
            networks (``"10.1.0.0/16"``) allowed even when not public.
        allow_private: allow every non-public address (loopback, private, link-local ...).

    Example:
        >>> NetworkPolicy().denial("127.0.0.1") is not None, NetworkPolicy().denial("93.184.215.14") is None
        (True, True)
        >>> NetworkPolicy(allow_hosts=["127.0.0.1"]).denial("127.0.0.1") is None
        True
    """

    def __init__(self, allow_hosts: Iterable[str] = (), allow_private: bool = False) -> None:
        if isinstance(allow_hosts, str):
            raise ConfigError(f"allow_hosts={allow_hosts!r} must be a list of host names or networks, e.g. [\"intranet.example\", \"10.0.0.0/8\"]")
        self.allow_private = bool(allow_private)
        self.hosts: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[Any] = []
        for entry in allow_hosts:
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigError(f"allow_hosts entry {entry!r} must be a host name, an IP address or a network like 10.0.0.0/8")
            e = entry.strip().lower().strip("[]")
            try:
                self.networks.append(ipaddress.ip_network(e, strict=False))
            except ValueError:
                if e.startswith("*."):
                    self.suffixes.append(e[1:])
                else:
                    self.hosts.add(e)

    def host_allowed(self, host: str) -> bool:
        h = host.lower().strip("[]")
        return h in self.hosts or any(h.endswith(s) for s in self.suffixes)

    def denial(self, address: str, host: str | None = None) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None when it is allowed."""
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.allow_private and not (ip.is_multicast or ip.is_unspecified):
            return None
        if (host is not None and self.host_allowed(host)) or any(ip in n for n in self.networks):
            return None
        for attr, what in _DENIED:
            if getattr(ip, attr):
                return what
        if not ip.is_global:
            return "not a public address"
        return None

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` it may connect to; raises NetworkPolicyError naming the refused one."""
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host!r}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            why = self.denial(address, host)
            if why is not None:
                shown = host if host.strip("[]") == address else f"{host} ({address})"
                raise NetworkPolicyError(
                    f"{shown} is {why}, which the web connector does not fetch by default (SSRF protection); "
                    f"to fetch it anyway pass allow_hosts=[{host.strip('[]')!r}] (or the network), or allow_private=True"
                )
        return addresses


def _guarded_backend(policy: NetworkPolicy, inner: Any) -> Any:
    """An httpcore network backend that connects only to addresses ``policy`` allows, resolved here."""
    httpcore = _require("httpcore", "web")

    class GuardedBackend(httpcore.NetworkBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
            last: Exception | None = None
            for address in policy.resolve(host, port):
                try:
                    return inner.connect_tcp(address, port, timeout=timeout, local_address=local_address, socket_options=socket_options)
                except httpcore.ConnectError as exc:
                    last = exc
            raise last or httpcore.ConnectError(f"no address to connect to for {host}")

        def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ANN001
            raise NetworkPolicyError(f"the web connector does not connect to unix sockets ({path!r})")

        def sleep(self, seconds: float) -> None:
            inner.sleep(seconds)

    return GuardedBackend()


def _check_url(url: Any, what: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ConfigError(f"WebConnector {what}={url!r} is not an absolute http(s) URL, e.g. https://example.org/page")
    return url


class WebConnector:
    """Pages from a URL list or a sitemap as Documents (one per canonical URL).

    Args:
        urls: the pages to fetch. At least one of ``urls``/``sitemap``.
        sitemap: a sitemap (or sitemap index, plain or gzipped) listing the pages.
        name: source id; default ``"web:<host of the sitemap or first URL>"``.
        timeout_s: connect/read timeout per request, in seconds.
        max_redirects: redirects followed per URL before it is reported.
        max_bytes: pages larger than this are reported instead of read (bytes).
        user_agent: the ``User-Agent`` header sent.
        allow_plain_text: also accept ``text/plain`` responses (as-is, no extraction).
        cache_path: JSON file holding validators and extracted pages between runs
            (read at start, written atomically at the end of a complete iteration).
        validators: the same cache as a dict, passed in directly (``cache_path`` wins).
        max_sitemap_depth: how deep nested sitemap indexes are followed.
        trust_env: use proxy settings from the environment (``HTTPS_PROXY``...); off by
            default so that local addresses are never sent through a proxy. With a proxy
            the policy checks each target host's addresses before the request (the proxy
            makes the connection).
        allow_hosts: host names, addresses or networks fetched even when not public.
        allow_private: fetch loopback, private and link-local addresses too (off by default).

    Attributes:
        source_id, complete (always True: every listed URL is yielded or reported),
        validators (the cache after the last iteration), stats (counts of fetched,
        not_modified and skipped pages of the last iteration).
    """

    def __init__(
        self,
        *,
        urls: list[str] | None = None,
        sitemap: str | None = None,
        name: str | None = None,
        timeout_s: float = 10.0,
        max_redirects: int = 5,
        max_bytes: int = 10_000_000,
        user_agent: str = "rag-lfm/0.1 (+https://pypi.org/project/rag-lfm)",
        allow_plain_text: bool = True,
        cache_path: str | None = None,
        validators: dict[str, dict[str, Any]] | None = None,
        max_sitemap_depth: int = 3,
        trust_env: bool = False,
        allow_hosts: list[str] | None = None,
        allow_private: bool = False,
    ) -> None:
        if not urls and not sitemap:
            raise ConfigError(
                "WebConnector needs urls=[...] or sitemap=\"https://.../sitemap.xml\" (got neither)"
            )
        self.urls = [_check_url(u, "urls[]") for u in (urls or [])]
        self.sitemap = _check_url(sitemap, "sitemap") if sitemap else None
        if timeout_s <= 0:
            raise ConfigError(f"WebConnector timeout_s={timeout_s!r} must be > 0 seconds, e.g. 10")
        if max_redirects < 0:
            raise ConfigError(f"WebConnector max_redirects={max_redirects!r} must be >= 0")
        self.timeout_s = float(timeout_s)
        self.max_redirects = max_redirects
        self.max_bytes = max_bytes
        self.user_agent = user_agent
        self.allow_plain_text = allow_plain_text
        self.cache_path = Path(cache_path) if cache_path else None
        self.max_sitemap_depth = max_sitemap_depth
        self.trust_env = trust_env
        self.allow_hosts = list(allow_hosts or [])
        self.allow_private = bool(allow_private)
        self.policy = NetworkPolicy(self.allow_hosts, self.allow_private)
        self.validators: dict[str, dict[str, Any]] = dict(validators or {})
        self.complete = True
        self.stats: dict[str, int] = {}
        first = urlsplit(self.sitemap or self.urls[0])
        host = (first.hostname or "") + (f":{first.port}" if first.port else "")
        self.source_id = name if name is not None else f"web:{host}"

    def describe(self) -> dict[str, Any]:
        """The spec that rebuilds this connector (what `rag-lfm sync` re-runs)."""
        spec: dict[str, Any] = {"type": "web", "name": self.source_id, "timeout_s": self.timeout_s,
                                "max_redirects": self.max_redirects, "max_bytes": self.max_bytes,
                                "allow_plain_text": self.allow_plain_text,
                                "max_sitemap_depth": self.max_sitemap_depth, "trust_env": self.trust_env}
        if self.allow_hosts:
            spec["allow_hosts"] = list(self.allow_hosts)
        if self.allow_private:
            spec["allow_private"] = True
        if self.urls:
            spec["urls"] = list(self.urls)
        if self.sitemap:
            spec["sitemap"] = self.sitemap
        if self.cache_path is not None:
            spec["cache_path"] = str(self.cache_path)
        return spec

    def __repr__(self) -> str:
        return f"WebConnector(source_id={self.source_id!r}, urls={len(self.urls)}, sitemap={self.sitemap!r})"

    # -- cache -----------------------------------------------------------------------
    def _load_cache(self) -> None:
        if self.cache_path is None or not self.cache_path.exists():
            return
        try:
            data = json.loads(self.cache_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"WebConnector cache_path={str(self.cache_path)!r} is unreadable ({exc}); delete it to refetch everything"
            ) from exc
        if not isinstance(data, dict):
            raise SourceError(f"WebConnector cache_path={str(self.cache_path)!r} does not hold a JSON object; delete it")
        self.validators = data

    def _save_cache(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # write beside, then rename: a crash never leaves a half-written cache
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".web-cache-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.validators, fh, ensure_ascii=False)
        os.replace(tmp, self.cache_path)

    # -- fetching --------------------------------------------------------------------
    def _client(self):
        httpx = _require("httpx", "web")
        transport = httpx.HTTPTransport(trust_env=self.trust_env)
        # The policy is enforced where the socket is opened, on the addresses actually used.
        pool = transport._pool
        pool._network_backend = _guarded_backend(self.policy, pool._network_backend)

        def check_target(request: Any) -> None:
            # Every request, each redirect included: a clear refusal before any connection
            # (and the only check of the target's addresses when a proxy connects for us).
            self.policy.resolve(request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80))

        return httpx.Client(
            follow_redirects=True,
            max_redirects=self.max_redirects,
            timeout=httpx.Timeout(self.timeout_s),
            headers={"User-Agent": self.user_agent},
            trust_env=self.trust_env,
            transport=transport,
            event_hooks={"request": [check_target]},
        )

    def _get(self, client, url: str, headers: dict[str, str] | None = None):
        """GET with a size cap; returns (response, body bytes)."""
        with client.stream("GET", url, headers=headers or {}) as resp:
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                return resp, None
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf.extend(chunk)
                if len(buf) > self.max_bytes:
                    return resp, None
            return resp, bytes(buf)

    def _sitemap_urls(self, client, url: str, depth: int) -> list[tuple[str, str | None]]:
        httpx = _require("httpx", "web")
        etree = _require("lxml.etree", "web")
        try:
            resp, body = self._get(client, url)
        except NetworkPolicyError as exc:
            raise SourceError(f"WebConnector sitemap {_public_url(url)!r} is refused: {exc}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise SourceError(f"WebConnector sitemap {_public_url(url)!r} could not be fetched: {type(exc).__name__}: {redact(str(exc))}") from None
        if resp.status_code != 200 or body is None:
            raise SourceError(
                f"WebConnector sitemap {_public_url(url)!r} answered HTTP {resp.status_code}"
                + (" (larger than max_bytes)" if body is None else "")
                + "; the page list is unknown, so nothing was changed"
            )
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        # no entities, no network: a sitemap is data, not a document to be expanded
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(body, parser)
        except etree.XMLSyntaxError as exc:
            raise SourceError(f"WebConnector sitemap {_public_url(url)!r} is not valid XML: {exc}") from exc
        tag = etree.QName(root).localname
        out: list[tuple[str, str | None]] = []
        if tag == "sitemapindex":
            if depth >= self.max_sitemap_depth:
                raise SourceError(
                    f"WebConnector sitemap {_public_url(url)!r} nests sitemap indexes deeper than max_sitemap_depth="
                    f"{self.max_sitemap_depth}; raise it if that is intended"
                )
            for loc in root.iter(f"{_SITEMAP_NS}loc", "loc"):
                if loc.getparent() is not None and etree.QName(loc.getparent()).localname == "sitemap":
                    out.extend(self._sitemap_urls(client, urljoin(url, loc.text.strip()), depth + 1))
            return out
        if tag != "urlset":
            raise SourceError(f"WebConnector sitemap {_public_url(url)!r} has root <{tag}>; expected <urlset> or <sitemapindex>")
        for entry in root:
            if not isinstance(entry.tag, str) or etree.QName(entry).localname != "url":
                continue
            loc = lastmod = None
            for child in entry:
                if not isinstance(child.tag, str):
                    continue
                name = etree.QName(child).localname
                if name == "loc" and child.text:
                    loc = urljoin(url, child.text.strip())
                elif name == "lastmod" and child.text:
                    lastmod = child.text.strip()
            if loc:
                out.append((loc, lastmod))
        return out

    def _ref(self, url: str) -> str:
        """The id a page had last time (its canonical URL) so a failure names the right document."""
        entry = self.validators.get(_public_url(url))
        if entry and entry.get("id"):
            return entry["id"]
        return normalize_url(url)

    def _fetch(self, client, url: str, lastmod: str | None) -> Document | Skipped:
        httpx = _require("httpx", "web")
        key = _public_url(url)  # the cache never holds credentials
        shown = key
        cached = self.validators.get(key)
        headers: dict[str, str] = {}
        # Only ask for a 304 when the page itself is cached: a 304 carries no body.
        if cached and cached.get("text") is not None:
            if cached.get("etag"):
                headers["If-None-Match"] = cached["etag"]
            if cached.get("last_modified"):
                headers["If-Modified-Since"] = cached["last_modified"]
        try:
            resp, body = self._get(client, url, headers)
        except NetworkPolicyError as exc:
            return Skipped(self._ref(url), f"{shown}: blocked by the network policy: {exc}")
        except httpx.TooManyRedirects:
            return Skipped(self._ref(url), f"{shown}: more than max_redirects={self.max_redirects} redirects")
        except httpx.TimeoutException as exc:
            return Skipped(self._ref(url), f"{shown}: timed out after {self.timeout_s:g}s ({type(exc).__name__})")
        except (httpx.HTTPError, OSError) as exc:
            return Skipped(self._ref(url), f"{shown}: request failed: {type(exc).__name__}: {redact(str(exc))}")
        if resp.status_code == 304 and cached:
            self.stats["not_modified"] += 1
            return Document(id=cached["id"], text=cached["text"], metadata=dict(cached.get("metadata") or {}))
        if resp.status_code >= 400:
            return Skipped(self._ref(url), f"{shown}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
        if resp.status_code != 200:
            return Skipped(self._ref(url), f"{shown}: unexpected HTTP {resp.status_code}; expected 200")
        if body is None:
            return Skipped(self._ref(url), f"{shown}: larger than max_bytes={self.max_bytes}")
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        final_url = str(resp.url)
        if ctype in _HTML_TYPES:
            trafilatura = _require("trafilatura", "web")
            html = body.decode(resp.encoding or "utf-8", errors="replace")
            text = trafilatura.extract(html, url=final_url, include_comments=False, favor_precision=True) or ""
            meta_obj = trafilatura.extract_metadata(html, default_url=final_url)
            title = (meta_obj.title if meta_obj is not None else None) or ""
            canonical = self._canonical(html, final_url)
        elif ctype in _TEXT_TYPES and self.allow_plain_text:
            text = body.decode(resp.encoding or "utf-8", errors="replace")
            title = ""
            canonical = normalize_url(final_url)
        else:
            hint = " (use the pdf connector for PDFs)" if ctype == "application/pdf" else ""
            return Skipped(
                self._ref(url),
                f"{shown}: content type {ctype or 'missing'!r} is not HTML{' or text' if self.allow_plain_text else ''}{hint}",
            )
        if not text.strip():
            return Skipped(canonical, f"{shown}: no main text could be extracted")
        metadata: dict[str, Any] = {"url": _public_url(final_url), "title": title}
        if resp.headers.get("last-modified"):
            metadata["last_modified"] = resp.headers["last-modified"]
        if lastmod:
            metadata["lastmod"] = lastmod
        doc = Document(id=canonical, text=text, metadata=metadata)
        self.validators[key] = {
            "id": canonical,
            "etag": resp.headers.get("etag"),
            "last_modified": resp.headers.get("last-modified"),
            "text": text,
            "metadata": metadata,
        }
        self.stats["fetched"] += 1
        return doc

    @staticmethod
    def _canonical(html: str, final_url: str) -> str:
        lxml_html = _require("lxml.html", "web")
        try:
            tree = lxml_html.fromstring(html)
        except (ValueError, lxml_html.etree.ParserError):
            return normalize_url(final_url)
        for link in tree.iter("link"):
            rel = (link.get("rel") or "").lower().split()
            href = link.get("href")
            if "canonical" in rel and href:
                target = urljoin(final_url, href.strip())
                if urlsplit(target).scheme in ("http", "https"):
                    return normalize_url(target)
        return normalize_url(final_url)

    # -- the protocol ----------------------------------------------------------------
    def iter_documents(self) -> Iterator[Document | Skipped]:
        """Yield one Document per page (Skipped per failed page; duplicates of a canonical
        URL are reported once).

        Raises:
            SourceError: the sitemap can't be fetched or parsed, or the cache is unreadable.
        """
        self._load_cache()
        self.stats = {"fetched": 0, "not_modified": 0, "skipped": 0}
        seen: set[str] = set()
        with self._client() as client:
            targets: list[tuple[str, str | None]] = [(u, None) for u in self.urls]
            if self.sitemap:
                targets.extend(self._sitemap_urls(client, self.sitemap, 0))
            done: set[str] = set()
            for url, lastmod in _progress(targets, self.source_id):
                key = normalize_url(url)
                if key in done:
                    continue
                done.add(key)
                item = self._fetch(client, url, lastmod)
                if isinstance(item, Document):
                    if item.id in seen:
                        self.stats["skipped"] += 1
                        yield Skipped(_public_url(url), f"{_public_url(url)}: same canonical URL as an earlier page ({item.id}); kept once")
                        continue
                    seen.add(item.id)
                else:
                    self.stats["skipped"] += 1
                yield item
        # forget pages no longer listed, so the cache does not grow forever
        listed = {_public_url(u) for u, _ in targets}
        self.validators = {u: v for u, v in self.validators.items() if u in listed}
        self._save_cache()


def _progress(items: list, desc: str):
    if len(items) < 50:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"fetch {desc}", unit="page", leave=False)


register_connector("web", WebConnector)
