"""Defect 8 of issue 10: the web connector's network policy (SSRF), against real local HTTP servers.

Server A on 127.0.0.1 plays a public site (allowed with allow_hosts); server B on 127.0.0.2
plays an internal service that must never be contacted unless allowed.
"""

from __future__ import annotations

import pytest

import _scenarios as sc
from rag_lfm.connectors.web import WebConnector
from rag_lfm.errors import SourceError
from rag_lfm.types import Document, Skipped

TEXT = ("The Seine is a 777-kilometre-long river in northern France. Its drainage basin is in the Paris Basin "
        "covering most of northern France, flowing through Paris and into the English Channel at Le Havre.")


@pytest.fixture
def servers():
    internal = sc.Server({"/secret": (200, {}, sc.page("Internal admin", "internal credentials and secrets " + TEXT))}, host="127.0.0.2")
    public = sc.Server({
        "/a": (200, {}, sc.page("Seine", TEXT)),
        "/to-internal": (302, {"Location": internal.base + "/secret"}, b""),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/sitemap.xml": (200, {"Content-Type": "application/xml"}, (
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            "<url><loc>{base}/a</loc></url>"
            f"<url><loc>{internal.base}/secret</loc></url>"
            "<url><loc>http://[::1]:9/x</loc></url>"
            "<url><loc>http://10.0.0.1/admin</loc></url>"
            "</urlset>").encode()),
    })
    yield public, internal
    public.close()
    internal.close()


def items(conn):
    out = list(conn.iter_documents())
    return {x.id for x in out if isinstance(x, Document)}, {x.ref: x.reason for x in out if isinstance(x, Skipped)}


def test_loopback_is_refused_by_default(servers):
    public, _ = servers
    docs, skipped = items(WebConnector(urls=[public.base + "/a"], timeout_s=2))
    assert docs == set() and public.hits == {}
    [reason] = skipped.values()
    assert "loopback" in reason and "allow_hosts=['127.0.0.1']" in reason


def test_redirects_to_internal_addresses_are_refused_after_every_hop(servers):
    public, internal = servers
    urls = [public.base + p for p in ("/a", "/to-internal", "/to-metadata")]
    docs, skipped = items(WebConnector(urls=urls, allow_hosts=["127.0.0.1"], timeout_s=2))
    assert docs == {public.base + "/a"}
    assert internal.hits == {}  # never contacted
    reasons = list(skipped.values())
    assert len(reasons) == 2 and all("blocked by the network policy" in r for r in reasons)
    assert any("127.0.0.2 is a loopback address" in r for r in reasons)
    assert any("169.254.169.254 is a link-local address" in r for r in reasons)


def test_host_names_are_checked_on_the_addresses_they_resolve_to(servers):
    public, _ = servers
    url = "http://localhost:" + public.base.rsplit(":", 1)[1] + "/a"
    docs, skipped = items(WebConnector(urls=[url], timeout_s=2))
    assert docs == set() and "localhost (127.0.0.1) is a loopback address" in next(iter(skipped.values()))
    docs, _ = items(WebConnector(urls=[url], allow_hosts=["localhost"], timeout_s=2))  # allowed by name
    assert docs == {url}


def test_sitemap_entries_are_checked_like_any_url(servers):
    public, internal = servers
    docs, skipped = items(WebConnector(sitemap=public.base + "/sitemap.xml", allow_hosts=["127.0.0.1"], timeout_s=2))
    assert docs == {public.base + "/a"} and internal.hits == {}
    assert len(skipped) == 3 and all("blocked by the network policy" in r for r in skipped.values())
    with pytest.raises(SourceError, match="sitemap .* is refused: 127.0.0.1 is a loopback address"):
        list(WebConnector(sitemap=public.base + "/sitemap.xml").iter_documents())


def test_allow_lists_open_exactly_what_they_name(servers):
    public, internal = servers
    docs, _ = items(WebConnector(urls=[public.base + "/to-internal"], allow_hosts=["127.0.0.1", "127.0.0.2"], timeout_s=2))
    assert docs == {internal.base + "/secret"}
    docs, _ = items(WebConnector(urls=[public.base + "/to-internal"], allow_hosts=["127.0.0.0/8"], timeout_s=2))
    assert docs == {internal.base + "/secret"}
    docs, _ = items(WebConnector(urls=[public.base + "/a", public.base + "/to-internal"], allow_private=True, timeout_s=2))
    assert len(docs) == 2
    docs, skipped = items(WebConnector(urls=[public.base + "/to-internal"], allow_hosts=["127.0.0.2"], timeout_s=2))
    assert docs == set() and "127.0.0.1 is a loopback address" in next(iter(skipped.values()))  # the first hop is not allowed


@pytest.mark.parametrize("address,denied", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("100.64.0.1", "not a public"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"),
    ("240.0.0.1", "reserved"), ("93.184.215.14", None), ("2606:4700::6810:85e5", None),
])
def test_policy_classifies_addresses(address, denied):
    from rag_lfm.connectors.web import NetworkPolicy

    why = NetworkPolicy().denial(address)
    assert (why is None) if denied is None else (denied in why), (address, why)
    assert NetworkPolicy(allow_private=True).denial(address) is None or address in ("224.0.0.1", "0.0.0.0")
