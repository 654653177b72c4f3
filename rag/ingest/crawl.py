"""Crawl a documentation site that publishes an ``llms.txt`` (https://llmstxt.org).

Start from an llms.txt URL (or a site root, where ``/llms.txt`` is tried), follow same-host
markdown/text links breadth-first within ``corpus.crawl`` limits (depth, file count, delay,
skip infixes, dropped query strings), and cache every page under ``.raftsmith/crawl/<host>``
with a manifest, so an interrupted or repeated crawl resumes from the cache without
fetching those pages again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
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
    http = client or httpx.Client(follow_redirects=True, timeout=cfg.timeout_s, headers={"User-Agent": USER_AGENT})
    pages: list[CrawledPage] = []
    failures: list[tuple[str, str]] = []
    queue: deque[tuple[str, int]] = deque([(first, 0)])
    queued = {first}
    last_fetch = 0.0
    try:
        while queue and len(pages) < cfg.max_files:
            page_url, depth = queue.popleft()
            hit = cache.get(page_url)
            if hit is not None:
                path, ctype = hit
                pages.append(CrawledPage(page_url, path, ctype, depth, True))
            else:
                wait = cfg.delay_s - (time.monotonic() - last_fetch)
                if wait > 0 and last_fetch:
                    time.sleep(wait)
                last_fetch = time.monotonic()
                try:
                    resp = http.get(page_url)
                    resp.raise_for_status()
                except httpx.HTTPStatusError as err:
                    reason = f"HTTP {err.response.status_code} from {page_url}"
                    if depth == 0:
                        raise IngestError(f"{reason}: no llms.txt there. Pass the llms.txt URL itself.") from None
                    failures.append((page_url, reason))
                    continue
                except httpx.HTTPError as err:
                    reason = f"cannot fetch {page_url}: {type(err).__name__}: {err}"
                    if depth == 0:
                        raise IngestError(f"{reason}. Check the URL and your network.") from None
                    failures.append((page_url, reason))
                    continue
                ctype = resp.headers.get("content-type", "")
                path = cache.put(page_url, resp.content, ctype)
                pages.append(CrawledPage(page_url, path, ctype, depth, False))
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
