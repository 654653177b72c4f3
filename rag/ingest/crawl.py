"""Crawl a documentation site that publishes an ``llms.txt`` (https://llmstxt.org).

Start from an llms.txt URL (or a site root, where ``/llms.txt`` is tried), follow same-host
markdown/text links breadth-first within ``corpus.crawl`` limits (depth, file count, delay,
skip infixes, dropped query strings), and cache every page under ``.raftsmith/crawl/<host>``
with a manifest, so an interrupted or repeated crawl resumes from the cache without
fetching those pages again.

A page is fetched as a hostile peer might serve it: redirects are followed by hand and only
on the starting host (content is never cited under a URL that did not serve it), the body
is streamed under ``corpus.crawl.max_page_mb`` counted both as sent and after gzip/deflate
decoding (done here, in bounded steps, so a compression bomb stops at the cap), and a
watchdog cuts the connection at ``corpus.crawl.page_deadline_s`` however slowly the server
drips bytes. Nothing is cached until the whole body passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from rag.errors import IngestError
from rag.fsutil import atomic_write
from rag.progress import Progress

if TYPE_CHECKING:
    import httpx

    from rag.config import CrawlConfig, Workspace

log = logging.getLogger(__name__)

_FOLLOW_SUFFIXES = (".md", ".markdown", ".mdx", ".txt")
_MD_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_BARE_URL = re.compile(r"(?<![(<\w])(https?://[^\s)<>\]\"']+)")
USER_AGENT = "raftsmith-crawler/0.1 (+llms.txt)"
MAX_REDIRECTS = 5
_DECODED = ("gzip", "x-gzip", "deflate")  # decoded here, with the size cap; other encodings are refused


class _Skip(Exception):
    """A page refused for a reason the crawl report shows (size, deadline, redirect)."""


@dataclass
class CrawledPage:
    url: str
    path: Path
    content_type: str
    depth: int
    from_cache: bool


def normalize_url(url: str, drop_query: bool) -> str:
    url, _frag = urldefrag(url)
    parts = urlsplit(url)
    query = "" if drop_query else parts.query
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, query, ""))


def extract_links(text: str, base: str) -> list[str]:
    """Absolute URLs of markdown links and bare URLs in ``text``, in order of appearance."""
    found: list[tuple[int, str]] = []
    for m in _MD_LINK.finditer(text):
        found.append((m.start(), m.group(1)))
    for m in _BARE_URL.finditer(text):
        found.append((m.start(), m.group(1).rstrip(".,;:")))
    out: list[str] = []
    for _, href in sorted(found):
        if href.startswith(("mailto:", "javascript:", "#")):
            continue
        absolute = urljoin(base, href)
        if absolute not in out:
            out.append(absolute)
    return out


def _wanted(url: str, host: str, cfg: CrawlConfig) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host:
        return False
    if any(infix and infix in url for infix in cfg.skip_infixes):
        return False
    return parts.path.lower().endswith(_FOLLOW_SUFFIXES)


def start_url(url: str) -> str:
    """The llms.txt to start from: the URL itself, or ``/llms.txt`` under a site root."""
    path = urlsplit(url).path
    if path.rsplit("/", 1)[-1].endswith(".txt") or path.endswith((".md", ".markdown")):
        return url
    return urljoin(url if url.endswith("/") else url + "/", "llms.txt")


class _Cache:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.manifest_path = folder / "manifest.json"
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.entries = {}

    def get(self, url: str) -> tuple[Path, str] | None:
        e = self.entries.get(url)
        if not e:
            return None
        p = self.folder / e["file"]
        return (p, e.get("content_type", "")) if p.is_file() else None

    def put(self, url: str, body: bytes, content_type: str) -> Path:
        suffix = Path(urlsplit(url).path).suffix.lower() or ".txt"
        if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
            suffix = ".txt"
        name = hashlib.sha256(url.encode()).hexdigest()[:24] + suffix
        path = self.folder / name
        atomic_write(path, body)
        self.entries[url] = {"file": name, "content_type": content_type,
                             "sha256": hashlib.sha256(body).hexdigest(), "fetched_at": time.time()}
        atomic_write(self.manifest_path, json.dumps(self.entries, indent=1, sort_keys=True))
        return path


def crawl(ws: Workspace, url: str, progress: Progress | None = None, client: httpx.Client | None = None,
          ) -> tuple[list[CrawledPage], list[tuple[str, str]]]:
    """Pages fetched (or taken from the cache) and (url, reason) failures. Raises IngestError
    when the starting llms.txt cannot be had."""
    import httpx

    cfg = ws.config.corpus.crawl
    first = normalize_url(start_url(url), cfg.drop_query)
    host = urlsplit(first).netloc.lower()
    cache = _Cache(ws.state_dir / "crawl" / re.sub(r"[^A-Za-z0-9._-]", "_", host))
    own_client = client is None
    # No keep-alive: every page gets its own connection, which the deadline watchdog can cut.
    http = client or httpx.Client(follow_redirects=False, timeout=min(cfg.timeout_s, cfg.page_deadline_s),
                                  headers={"User-Agent": USER_AGENT},
                                  limits=httpx.Limits(max_keepalive_connections=0))
    pages: list[CrawledPage] = []
    failures: list[tuple[str, str]] = []
    queue: deque[tuple[str, int]] = deque([(first, 0)])
    queued = {first}
    fetched: set[str] = set()
    last_fetch = 0.0
    try:
        while queue and len(pages) < cfg.max_files:
            page_url, depth = queue.popleft()
            hit = cache.get(page_url)
            if hit is not None:
                path, ctype = hit
                pages.append(CrawledPage(page_url, path, ctype, depth, True))
                fetched.add(page_url)
            else:
                wait = cfg.delay_s - (time.monotonic() - last_fetch)
                if wait > 0 and last_fetch:
                    time.sleep(wait)
                last_fetch = time.monotonic()
                try:
                    final_url, body, ctype = _fetch(http, page_url, host, cfg)
                except _Skip as err:
                    if depth == 0:
                        raise IngestError(f"{page_url}: {err}. Pass an llms.txt URL that serves it directly.") from None
                    failures.append((page_url, str(err)))
                    continue
                except httpx.HTTPStatusError as err:
                    reason = f"HTTP {err.response.status_code} from {page_url}"
                    if depth == 0:
                        raise IngestError(f"{reason}: no llms.txt there. Pass the llms.txt URL itself.") from None
                    failures.append((page_url, reason))
                    continue
                except (httpx.HTTPError, OSError) as err:
                    reason = f"cannot fetch {page_url}: {type(err).__name__}: {err}"
                    if depth == 0:
                        raise IngestError(f"{reason}. Check the URL and your network.") from None
                    failures.append((page_url, reason))
                    continue
                if final_url != page_url:
                    if final_url in fetched:
                        continue  # a same-host redirect to a page this crawl already has
                    queued.add(final_url)
                    page_url = final_url
                path = cache.put(page_url, body, ctype)
                pages.append(CrawledPage(page_url, path, ctype, depth, False))
            fetched.add(page_url)
            if depth >= cfg.max_depth:
                continue
            try:
                text = path.read_bytes().decode("utf-8", errors="replace")
            except OSError:
                continue
            for link in extract_links(text, page_url):
                link = normalize_url(link, cfg.drop_query)
                if link not in queued and _wanted(link, host, cfg):
                    queued.add(link)
                    queue.append((link, depth + 1))
    finally:
        if own_client:
            http.close()
    if queue:
        log.info("crawl stopped at corpus.crawl.max_files=%d with %d links left", cfg.max_files, len(queue))
    return pages, failures


def _fetch(http: httpx.Client, url: str, host: str, cfg: CrawlConfig) -> tuple[str, bytes, str]:
    """(final URL, body, content type) of one page, within the host, size and deadline limits.

    Raises _Skip with the reason, or httpx errors (HTTPStatusError for 4xx/5xx).
    """
    import httpx

    sockets: list[socket.socket] = []
    cut = threading.Event()

    def trace(name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                sockets.append(sock)

    def expire() -> None:
        cut.set()
        for sock in sockets:  # wakes a blocked read at once; a closed socket just raises here
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    deadline = time.monotonic() + cfg.page_deadline_s
    watchdog = threading.Timer(cfg.page_deadline_s, expire)
    watchdog.daemon = True
    watchdog.start()
    current = url
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            with http.stream("GET", current, headers={"Accept-Encoding": "gzip, deflate"}, follow_redirects=False,
                             extensions={"trace": trace}) as resp:
                if resp.is_redirect:
                    target = normalize_url(urljoin(current, resp.headers.get("location", "")), cfg.drop_query)
                    parts = urlsplit(target)
                    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host:
                        raise _Skip(f"redirected (HTTP {resp.status_code}) to another host, {parts.netloc or target!r}; "
                                    f"not followed: the crawl stays on {host}")
                    current = target
                    continue
                resp.raise_for_status()
                body = _read_capped(resp, cfg, deadline, cut)
                return current, body, resp.headers.get("content-type", "")
        raise _Skip(f"more than {MAX_REDIRECTS} redirects; not followed")
    except (httpx.HTTPError, OSError):
        if cut.is_set():
            raise _Skip(_too_slow(cfg)) from None
        raise
    finally:
        watchdog.cancel()


def _too_slow(cfg: CrawlConfig) -> str:
    return (f"took longer than corpus.crawl.page_deadline_s = {cfg.page_deadline_s:g} s and was cut off; "
            "not cached (raise page_deadline_s for a slow site)")


def _read_capped(resp: httpx.Response, cfg: CrawlConfig, deadline: float, cut: threading.Event) -> bytes:
    """The body, decoded, or _Skip once it passes max_page_mb (as sent or decoded) or the deadline."""
    cap = int(cfg.max_page_mb * 1024 * 1024)
    over = f"over corpus.crawl.max_page_mb = {cfg.max_page_mb:g} MB; not cached (raise max_page_mb for big pages)"
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity", *_DECODED):
        raise _Skip(f"Content-Encoding {encoding!r} is not supported (only gzip and deflate); not cached")
    declared = resp.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > cap:
        raise _Skip(f"Content-Length is {int(declared):,} bytes, {over}")
    # wbits 32+15: zlib or gzip header, detected; max_length bounds every step's output.
    decoder = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in _DECODED else None
    out = bytearray()
    sent = 0
    try:
        for chunk in resp.iter_raw():
            if cut.is_set() or time.monotonic() > deadline:
                raise _Skip(_too_slow(cfg))
            sent += len(chunk)
            if sent > cap:
                raise _Skip(f"the server sent more than {cap:,} bytes, {over}")
            if decoder is None:
                out += chunk
                continue
            data = chunk
            while data:
                out += decoder.decompress(data, cap + 1 - len(out))
                if len(out) > cap:
                    raise _Skip(f"the body decodes to more than {cap:,} bytes (a compression bomb?), {over}")
                data = decoder.unconsumed_tail
    except zlib.error as err:
        raise _Skip(f"the {encoding} body is corrupt ({err}); not cached") from None
    if decoder is not None:
        if not decoder.eof:
            raise _Skip(f"the {encoding} body is corrupt or cut short (its stream never ends); not cached")
        out += decoder.flush()
        if len(out) > cap:
            raise _Skip(f"the body decodes to more than {cap:,} bytes (a compression bomb?), {over}")
    return bytes(out)
