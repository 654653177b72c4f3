"""llms.txt crawling against a fixture site on a loopback http.server thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rag.config import init_workspace, load_workspace
from rag.errors import IngestError
from rag.ingest.crawl import crawl, extract_links
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

SITE = {
    "/llms.txt": (
        "text/plain",
        "# Plover Docs\n\n> Docs for the Plover gateway.\n\n## Docs\n\n"
        "- [Setup](/docs/setup.md): install it\n"
        "- [Ports](docs/ports.md?utm=feed#top): which ports\n"
        "- [Internal](/internal/secret.md): not for crawling\n"
        "- [Elsewhere](http://example.invalid/other.md)\n"
        "- [Missing](/docs/missing.md)\n"
        "- [Home page](/index.html)\n",
    ),
    "/docs/setup.md": ("text/markdown", "# Setup\n\nInstall the Plover gateway with `plover install`.\n\nSee [deep](deep.md).\n"),
    "/docs/ports.md": ("text/markdown", "# Ports\n\nThe Plover gateway listens on port 6612.\n"),
    "/docs/deep.md": ("text/markdown", "# Deep\n\nDeep page mentions the bittern flag.\n\n[deeper](deeper.md)\n"),
    "/docs/deeper.md": ("text/markdown", "# Deeper\n\nToo deep to be crawled at depth 2.\n"),
    "/internal/secret.md": ("text/markdown", "# Secret\n\nshould never be fetched\n"),
    "/index.html": ("text/html", "<html><body><p>html home</p></body></html>"),
}


class _Site:
    def __init__(self) -> None:
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                site.requests.append(self.path)
                entry = SITE.get(self.path.split("?", 1)[0])
                if entry is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = entry[1].encode()
                self.send_response(200)
                self.send_header("Content-Type", entry[0])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[_Site]:
    s = _Site()
    yield s
    s.close()


def _ws(tmp_path: Path, **crawl_cfg: object):
    ws = init_workspace(tmp_path / "ws")
    ws.config.corpus.crawl.delay_s = 0.0
    ws.config.corpus.crawl.skip_infixes = ["/internal/"]
    for k, v in crawl_cfg.items():
        setattr(ws.config.corpus.crawl, k, v)
    return ws


def test_extract_links() -> None:
    links = extract_links("[a](x.md) see https://h.example/y.txt and [b](/z.md \"t\")", "https://h.example/docs/")
    assert links == ["https://h.example/docs/x.md", "https://h.example/y.txt", "https://h.example/z.md"]


def test_crawl_depth_skip_drop_query(site: _Site, tmp_path: Path) -> None:
    ws = _ws(tmp_path, max_depth=2)
    pages, failures = crawl(ws, site.base + "/")  # a site root: /llms.txt is tried
    urls = [p.url.removeprefix(site.base) for p in pages]
    assert urls == ["/llms.txt", "/docs/setup.md", "/docs/ports.md", "/docs/deep.md"]
    assert [p.depth for p in pages] == [0, 1, 1, 2]
    assert failures == [(site.base + "/docs/missing.md", "HTTP 404 from " + site.base + "/docs/missing.md")]
    assert "/internal/secret.md" not in site.requests  # skip infix
    assert "/index.html" not in site.requests  # only markdown/text links are followed
    assert "/docs/deeper.md" not in site.requests  # beyond max_depth
    assert "/docs/ports.md" in site.requests  # query string and fragment dropped
    assert not any("utm" in r for r in site.requests)


def test_crawl_keeps_query_when_asked(site: _Site, tmp_path: Path) -> None:
    ws = _ws(tmp_path, max_depth=1, drop_query=False)
    crawl(ws, site.base + "/llms.txt")
    assert "/docs/ports.md?utm=feed" in site.requests


def test_crawl_file_limit_and_resume_from_cache(site: _Site, tmp_path: Path) -> None:
    ws = _ws(tmp_path, max_depth=2, max_files=2)
    pages, _ = crawl(ws, site.base + "/llms.txt")
    assert len(pages) == 2 and len(site.requests) == 2
    site.requests.clear()
    ws.config.corpus.crawl.max_files = 50
    pages, _ = crawl(ws, site.base + "/llms.txt")
    assert len(pages) == 4
    assert [p.from_cache for p in pages] == [True, True, False, False]
    assert "/llms.txt" not in site.requests and "/docs/setup.md" not in site.requests


def test_crawl_bad_start_is_a_clear_error(site: _Site, tmp_path: Path) -> None:
    ws = _ws(tmp_path)
    with pytest.raises(IngestError, match="HTTP 404"):
        crawl(ws, site.base + "/nothing/llms.txt")
    with pytest.raises(IngestError, match="cannot fetch"):
        crawl(ws, "http://127.0.0.1:9/llms.txt")


def test_ingest_an_llms_txt_url(site: _Site, tmp_path: Path) -> None:
    ws = _ws(tmp_path, max_depth=1)
    ws.config_path.write_text(ws.config_path.read_text().replace("delay_s: 0.2", "delay_s: 0.0")
                              .replace("skip_infixes: []", "skip_infixes: ['/internal/']"))
    ws = load_workspace(ws.config_path)
    report = ingest(ws, paths=[site.base + "/llms.txt"])
    by = {f.source.removeprefix(site.base): f for f in report.files}
    assert by["/docs/ports.md"].status == "ok"
    assert by["/docs/missing.md"].status == "error"
    with Retriever.from_workspace(ws) as r:
        top = r.search("Which port does the Plover gateway listen on?", k=1)[0]
        assert top.source == site.base + "/docs/ports.md" and "6612" in top.text
    n = len(site.requests)
    again = ingest(ws, paths=[site.base + "/llms.txt"])
    assert again.embeddings_computed == 0
    assert len(site.requests) - n == 1  # only the page that failed before is retried
