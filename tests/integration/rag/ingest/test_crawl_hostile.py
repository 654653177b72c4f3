"""The crawler against hostile peers: real sockets, crafted responses built in each test.

Redirects off the host, bodies over the size cap (declared, streamed and gzip-decoded) and
servers that drip bytes are refused with the reason, nothing of theirs is cached, and the
rest of the crawl (and the index, and the audit chain) is what it would have been.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rag.audit import verify_workspace
from rag.config import init_workspace
from rag.errors import IngestError
from rag.ingest.crawl import crawl
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

Route = Callable[[BaseHTTPRequestHandler], None]
MB = 1024 * 1024


class _Server:
    """A loopback HTTP server whose routes are functions writing whatever bytes they like."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        self.sent: dict[str, int] = {}
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                srv.requests.append(self.path)
                route = srv.routes.get(self.path)
                try:
                    if route is None:
                        _send(self, 404, b"not here", "text/plain")
                    else:
                        route(self)
                except OSError:  # the crawler hung up on us: that is the point of most tests here
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign]  # resets from the hung-up crawler
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "text/markdown",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def _page(text: str, ctype: str = "text/markdown") -> Route:
    return lambda h: _send(h, 200, text.encode(), ctype)


def _redirect(location: str, status: int = 302) -> Route:
    return lambda h: _send(h, status, b"", "text/plain", {"Location": location})


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.close()


def _serve(made: list[_Server], routes: dict[str, Route]) -> _Server:
    s = _Server(routes)
    made.append(s)
    return s


def _ws(tmp_path: Path, **crawl_cfg: object):  # type: ignore[no-untyped-def]
    ws = init_workspace(tmp_path / "ws")
    ws.config.corpus.crawl.delay_s = 0.0
    for k, v in crawl_cfg.items():
        setattr(ws.config.corpus.crawl, k, v)
    return ws


def _cached_bytes(ws) -> bytes:  # type: ignore[no-untyped-def]
    folder = ws.state_dir / "crawl"
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()) if folder.exists() else b""


LLMS = "# Site\n\n- [Good](/docs/good.md)\n- [Moved](/docs/moved.md)\n- [Away](/docs/away.md)\n"


def test_redirect_to_another_host_is_not_followed(servers: list[_Server], tmp_path: Path) -> None:
    other = _serve(servers, {"/evil.md": _page("# Evil\n\nThe quokka password is hunter2.\n")})
    site = _serve(servers, {
        "/llms.txt": _page(LLMS, "text/plain"),
        "/docs/good.md": _page("# Good\n\nThe heron valve opens at 4 bar.\n"),
        "/docs/moved.md": _redirect("/docs/new.md", 301),
        "/docs/new.md": _page("# New\n\nThe egret pump runs at 900 rpm.\n"),
        "/docs/away.md": _redirect(other.base + "/evil.md"),
    })
    ws = _ws(tmp_path)
    pages, failures = crawl(ws, site.base + "/llms.txt")
    urls = [p.url.removeprefix(site.base) for p in pages]
    assert urls == ["/llms.txt", "/docs/good.md", "/docs/new.md"]  # a same-host redirect: cited where it was served
    assert len(failures) == 1 and failures[0][0] == site.base + "/docs/away.md"
    assert "another host" in failures[0][1] and "not followed" in failures[0][1]
    assert other.requests == []  # never even asked
    assert b"quokka" not in _cached_bytes(ws)
    assert "/docs/new.md" in site.requests


def test_start_redirected_off_the_host_is_a_clear_error(servers: list[_Server], tmp_path: Path) -> None:
    other = _serve(servers, {"/llms.txt": _page("# Other\n", "text/plain")})
    site = _serve(servers, {"/llms.txt": _redirect(other.base + "/llms.txt", 307)})
    with pytest.raises(IngestError, match="another host.*serves it directly"):
        crawl(_ws(tmp_path), site.base + "/llms.txt")
    assert other.requests == []


def test_redirect_loop_stops(servers: list[_Server], tmp_path: Path) -> None:
    site = _serve(servers, {"/llms.txt": _page("- [Loop](/a.md)\n", "text/plain"),
                            "/a.md": _redirect("/b.md"), "/b.md": _redirect("/a.md")})
    pages, failures = crawl(_ws(tmp_path), site.base + "/llms.txt")
    assert len(pages) == 1 and "redirects" in failures[0][1]
    assert len(site.requests) == 1 + 6  # llms.txt, then the first request and 5 redirects


def _streamed(total: int, declared: int | None = None, chunk: int = 64 * 1024) -> tuple[Route, dict[str, int]]:
    """A body of ``total`` bytes written in chunks, with the bytes the server managed to send counted."""
    sent = {"bytes": 0}

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/markdown")
        if declared is None:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(declared))
        h.end_headers()
        block = b"# Big\n\n" + b"x" * (chunk - 7)
        while sent["bytes"] < total:
            if declared is None:
                h.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            else:
                h.wfile.write(block)
            sent["bytes"] += len(block)
        if declared is None:
            h.wfile.write(b"0\r\n\r\n")

    return route, sent


def test_oversized_bodies_are_refused_before_caching(servers: list[_Server], tmp_path: Path) -> None:
    declared_route, declared_sent = _streamed(300 * MB, declared=300 * MB)
    chunked_route, chunked_sent = _streamed(300 * MB)
    site = _serve(servers, {
        "/llms.txt": _page("- [A](/declared.md)\n- [B](/chunked.md)\n- [D](/fine.md)\n", "text/plain"),
        "/declared.md": declared_route, "/chunked.md": chunked_route,
        "/fine.md": _page("# Fine\n\n" + "ok " * 1000),
    })
    ws = _ws(tmp_path, max_page_mb=1.0)
    pages, failures = crawl(ws, site.base + "/llms.txt")
    reasons = {url.removeprefix(site.base): why for url, why in failures}
    assert "Content-Length is 314,572,800 bytes" in reasons["/declared.md"]
    assert "sent more than 1,048,576 bytes" in reasons["/chunked.md"]
    assert all("max_page_mb" in why and "not cached" in why for why in reasons.values())
    assert [p.url.removeprefix(site.base) for p in pages] == ["/llms.txt", "/fine.md"]
    # the stream was cut near the cap: the servers could not push the 300 MB through
    assert declared_sent["bytes"] < 32 * MB and chunked_sent["bytes"] < 32 * MB
    cached = _cached_bytes(ws)
    assert len(cached) < 2 * MB and b"x" * 1000 not in cached


def test_content_length_smaller_than_the_body_is_not_trusted(servers: list[_Server], tmp_path: Path) -> None:
    liar_route, sent = _streamed(300 * MB, declared=1000)  # says 1000 bytes, then sends on and on
    site = _serve(servers, {"/llms.txt": _page("- [C](/liar.md)\n", "text/plain"), "/liar.md": liar_route})
    ws = _ws(tmp_path, max_page_mb=1.0)
    pages, failures = crawl(ws, site.base + "/llms.txt")
    # exactly the declared 1000 bytes are this page's body; the connection is closed after them
    assert failures == [] and pages[-1].url == site.base + "/liar.md"
    assert pages[-1].path.read_bytes() == (b"# Big\n\n" + b"x" * 993)
    assert sent["bytes"] < 32 * MB


def _gzip_route(body: bytes, encoding: str = "gzip") -> Route:
    return lambda h: _send(h, 200, body, "text/markdown", {"Content-Encoding": encoding})


def _bomb(decoded_mb: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * MB
    return b"".join(comp.compress(zeros) for _ in range(decoded_mb)) + comp.flush()


def test_gzip_bomb_is_cut_at_the_decoded_cap(servers: list[_Server], tmp_path: Path) -> None:
    bomb = _bomb(200)
    assert len(bomb) < MB  # small on the wire, 200 MB decoded
    good = gzip.compress(b"# Zipped\n\nThe ibis gate closes at dusk.\n")
    deflated = zlib.compress(b"# Deflated\n\nThe stork latch is blue.\n")
    site = _serve(servers, {
        "/llms.txt": _page("- [Bomb](/bomb.md)\n- [Good](/good.md)\n- [Deflate](/deflate.md)\n- [Br](/br.md)\n"
                           "- [Broken](/broken.md)\n", "text/plain"),
        "/bomb.md": _gzip_route(bomb), "/good.md": _gzip_route(good), "/deflate.md": _gzip_route(deflated, "deflate"),
        "/br.md": _gzip_route(b"\x0b\x02\x80hello\x03", "br"), "/broken.md": _gzip_route(good[:20] + b"garbage" * 9),
    })
    ws = _ws(tmp_path, max_page_mb=1.0)
    pages, failures = crawl(ws, site.base + "/llms.txt")
    reasons = {url.removeprefix(site.base): why for url, why in failures}
    assert "decodes to more than 1,048,576 bytes" in reasons["/bomb.md"]
    assert "'br' is not supported" in reasons["/br.md"]
    assert "corrupt" in reasons["/broken.md"]
    by = {p.url.removeprefix(site.base): p for p in pages}
    assert by["/good.md"].path.read_bytes() == b"# Zipped\n\nThe ibis gate closes at dusk.\n"
    assert by["/deflate.md"].path.read_bytes() == b"# Deflated\n\nThe stork latch is blue.\n"
    assert len(_cached_bytes(ws)) < 64 * 1024


def _drip(status_first: bool, interval: float = 1.0, n: int = 200) -> Route:
    """1 byte per ``interval``: in the body (after the headers), or in the headers themselves."""

    def route(h: BaseHTTPRequestHandler) -> None:
        if status_first:
            h.send_response(200)
            h.send_header("Content-Type", "text/markdown")
            h.send_header("Content-Length", str(n))
            h.end_headers()
            h.wfile.flush()
            for _ in range(n):
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(interval)
        else:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * n:
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                time.sleep(interval)

    return route


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_drip_is_cut_at_the_page_deadline(servers: list[_Server], tmp_path: Path, where: str) -> None:
    site = _serve(servers, {"/llms.txt": _page("- [Slow](/slow.md)\n- [Fine](/fine.md)\n", "text/plain"),
                            "/slow.md": _drip(where == "body", interval=0.5 if where == "headers" else 1.0),
                            "/fine.md": _page("# Fine\n\nQuick page.\n")})
    # each read comes well within timeout_s; only the total deadline can stop this page
    ws = _ws(tmp_path, page_deadline_s=2.0, timeout_s=10.0)
    t0 = time.monotonic()
    pages, failures = crawl(ws, site.base + "/llms.txt")
    took = time.monotonic() - t0
    assert [p.url.removeprefix(site.base) for p in pages] == ["/llms.txt", "/fine.md"]
    assert failures[0][0].endswith("/slow.md") and "page_deadline_s = 2 s" in failures[0][1]
    assert took < 2.0 + 5.0, took  # cut at the deadline, not after the 100-200 s drip nor a 10 s read timeout


def test_ingest_of_a_hostile_site_keeps_what_is_good(servers: list[_Server], tmp_path: Path) -> None:
    other = _serve(servers, {"/evil.md": _page("# Evil\n\nThe quokka password is hunter2.\n")})
    site = _serve(servers, {
        "/llms.txt": _page("- [Good](/good.md)\n- [Away](/away.md)\n- [Bomb](/bomb.md)\n- [Slow](/slow.md)\n",
                           "text/plain"),
        "/good.md": _page("# Good\n\nThe heron valve opens at 4 bar.\n"),
        "/away.md": _redirect(other.base + "/evil.md"),
        "/bomb.md": _gzip_route(_bomb(50)),
        "/slow.md": _drip(True),
    })
    ws = _ws(tmp_path, max_page_mb=1.0, page_deadline_s=2.0)
    ws.config_path.write_text(ws.config_path.read_text()
                              .replace("max_depth: 2", "max_depth: 1").replace("delay_s: 0.2", "delay_s: 0.0")
                              .replace("page_deadline_s: 60.0", "page_deadline_s: 2.0")
                              .replace("max_page_mb: 10.0", "max_page_mb: 1.0"))
    from rag.config import load_workspace

    ws = load_workspace(ws.config_path)
    assert ws.config.corpus.crawl.max_page_mb == 1.0 and ws.config.corpus.crawl.page_deadline_s == 2.0
    report = ingest(ws, paths=[site.base + "/llms.txt"])
    by = {f.source.removeprefix(site.base): f for f in report.files}
    assert by["/good.md"].status == "ok"
    for bad, why in (("/away.md", "another host"), ("/bomb.md", "decodes to more"), ("/slow.md", "page_deadline_s")):
        assert by[bad].status == "error" and why in (by[bad].reason or ""), (bad, by[bad])
    with Retriever.from_workspace(ws) as r:
        hits = r.search("What is the quokka password?", k=5)
        assert all("hunter2" not in h.text for h in hits)
        assert all(h.source.startswith(site.base) and "evil" not in h.source for h in hits)
        top = r.search("At what pressure does the heron valve open?", k=1)[0]
        assert top.source == site.base + "/good.md" and "4 bar" in top.text
    assert other.requests == []
    assert verify_workspace(ws).ok
