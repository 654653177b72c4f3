"""Turn files into text: markdown/mdx, plain text, reStructuredText, HTML (main text) and PDF.

Every parser returns a :class:`ParsedDoc`; anything a person can fix (encrypted PDF, binary
file, too large) raises :class:`SkipFile` (not an error: reported as skipped with a reason)
or :class:`IngestError` (reported as an error with the reason).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import IngestError

KINDS: dict[str, str] = {
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".txt": "text", ".text": "text",
    ".rst": "rst",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
}
_BINARY_SNIFF = 8192


class SkipFile(Exception):
    """This file is deliberately not indexed; ``str(err)`` is the reason shown to the user."""


@dataclass
class ParsedDoc:
    """Text of one document. ``kind`` picks the chunking rules ("markdown", "rst", "text", "pdf").

    For PDFs ``pages`` holds (page number, text) and ``text`` is their concatenation.
    """

    text: str
    kind: str
    title: str = ""
    pages: list[tuple[int, str]] = field(default_factory=list)
    encoding: str = "utf-8"


def kind_for(path: str | Path, content_type: str | None = None) -> str | None:
    suffix = Path(str(path).split("?", 1)[0]).suffix.lower()
    if suffix in KINDS:
        return KINDS[suffix]
    if content_type:
        ct = content_type.split(";")[0].strip().lower()
        return {"text/markdown": "markdown", "text/x-markdown": "markdown", "text/plain": "text",
                "text/html": "html", "application/pdf": "pdf", "text/x-rst": "rst"}.get(ct)
    return None


def looks_binary(data: bytes) -> bool:
    """NUL bytes or mostly control characters in the first 8 KiB (after any UTF-16 BOM check)."""
    head = data[:_BINARY_SNIFF]
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.10


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (BOM optional), UTF-16 with BOM, else Latin-1. Binary -> SkipFile."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise SkipFile("starts with a UTF-16 byte-order mark but is not valid UTF-16") from None
    if looks_binary(data):
        raise SkipFile("binary file (not text)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_bytes(data: bytes, kind: str, name: str = "") -> ParsedDoc:
    if not data.strip():
        raise SkipFile("empty file")
    if kind == "pdf":
        return parse_pdf(data, name)
    text, enc = decode_text(data)
    text = _normalize(text)
    if kind == "html":
        doc = parse_html(text)
        doc.encoding = enc
        return doc
    if not text.strip():
        raise SkipFile("no text")
    return ParsedDoc(text=text, kind=kind, encoding=enc)


# --- HTML -----------------------------------------------------------------------------------
_DROP_TAGS = ("script", "style", "nav", "header", "footer", "aside", "noscript", "template", "svg",
              "iframe", "form", "button")
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "blockquote", "dd", "dt", "figure", "figcaption",
               "details", "summary", "address"}


def parse_html(html: str) -> ParsedDoc:
    """Main text of an HTML page as markdown-like text (headings as '#', code fenced, tables piped)."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.select('[role="navigation"], [role="banner"], [role="contentinfo"]'):
        tag.decompose()
    root = soup.find("main") or soup.select_one('[role="main"]') or soup.find("article") or soup.body or soup

    out: list[str] = []

    def inline(node: Tag) -> str:
        return re.sub(r"\s+", " ", node.get_text()).strip()

    def emit(block: str) -> None:
        if block.strip():
            out.append(block.strip("\n"))

    def walk(node: Tag) -> None:
        buf: list[str] = []

        def flush() -> None:
            if buf:
                joined = re.sub(r"\s+", " ", "".join(buf))
                emit(re.sub(r" ?\x00 ?", "\n", joined).strip())
                buf.clear()

        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child).__name__ in ("Comment", "Doctype", "ProcessingInstruction"):
                    continue
                if child.strip():
                    buf.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name or ""
            if re.fullmatch(r"h[1-6]", name):
                flush()
                emit("#" * int(name[1]) + " " + inline(child))
            elif name == "pre":
                flush()
                code = child.get_text()
                emit("```\n" + code.strip("\n") + "\n```")
            elif name in ("ul", "ol"):
                flush()
                items = [f"- {inline(li)}" for li in child.find_all("li", recursive=False)]
                emit("\n".join(items))
            elif name == "table":
                flush()
                rows = []
                for tr in child.find_all("tr"):
                    cells = [inline(c) for c in tr.find_all(["th", "td"])]
                    rows.append("| " + " | ".join(cells) + " |")
                    if len(rows) == 1 and tr.find("th"):
                        rows.append("|" + "---|" * len(cells))
                emit("\n".join(rows))
            elif name in _BLOCK_TAGS or name in ("body", "html"):
                flush()
                walk(child)
            elif name == "br":
                buf.append("\x00")  # <br>: a line break that survives whitespace folding
            else:
                buf.append(child.get_text())
        flush()

    walk(root)
    text = "\n\n".join(out)
    if not text.strip():
        raise SkipFile("HTML page has no main text")
    if title and not text.lstrip().startswith("# "):
        text = f"# {title}\n\n{text}"
    return ParsedDoc(text=text + "\n", kind="markdown", title=title)


# --- PDF ------------------------------------------------------------------------------------
def parse_pdf(data: bytes, name: str = "") -> ParsedDoc:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("") != 0  # owner-password-only PDFs open with ""
            except Exception:  # noqa: BLE001 - unsupported algorithm etc.
                opened = False
            if not opened:
                raise IngestError("encrypted PDF with a password; decrypt it first (e.g. qpdf --decrypt IN OUT)")
        pages: list[tuple[int, str]] = []
        for i, page in enumerate(reader.pages, start=1):
            text = _normalize(page.extract_text() or "")
            if text.strip():
                pages.append((i, text))
    except IngestError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, IndexError,
            RecursionError, AssertionError, ZeroDivisionError) as err:
        raise IngestError(f"cannot read PDF ({type(err).__name__}: {err}); the file may be truncated or damaged") from None
    if not pages:
        raise SkipFile("PDF has no extractable text (scanned images? run OCR first)")
    title = ""
    try:
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title)
    except Exception:  # noqa: BLE001 - metadata is optional
        title = ""
    return ParsedDoc(text="\n\n".join(t for _, t in pages), kind="pdf", title=title or Path(name).stem, pages=pages)


def read_file(path: Path, max_bytes: int) -> tuple[bytes, ParsedDoc]:
    """Read and parse ``path``; SkipFile/IngestError on the reasons above."""
    kind = kind_for(path)
    if kind is None:
        raise SkipFile(f"unsupported file type '{path.suffix or path.name}'")
    size = path.stat().st_size
    if size > max_bytes:
        raise SkipFile(f"larger than corpus.max_file_mb ({size / 1e6:.1f} MB > {max_bytes / 1e6:.1f} MB)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IngestError(f"cannot read: {err.strerror or err}") from None
    return data, parse_bytes(data, kind, path.name)
