"""Turn files into text: markdown/mdx, plain text, reStructuredText, HTML (main text) and PDF.

Every parser returns a :class:`ParsedDoc`; anything a person can fix (encrypted PDF, binary
file, too large) raises :class:`SkipFile` (not an error: reported as skipped with a reason)
or :class:`IngestError` (reported as an error with the reason).

Hostile input is bounded by :class:`TextLimits`: text past ``max_text_chars`` skips the file
(a PDF stops extracting as soon as it gets there), and a PDF page whose drawing instructions
decode past ``max_page_bytes``, or a file whose pages together pass ``max_content_bytes``,
is skipped before pypdf parses them (its text extraction is slow on huge content streams).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import IngestError

if TYPE_CHECKING:
    from rag.config import CorpusConfig

KINDS: dict[str, str] = {
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".txt": "text", ".text": "text",
    ".rst": "rst",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
}
_BINARY_SNIFF = 8192
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27))
_UTF8_REPLACEMENT = "\ufffd".encode()


class SkipFile(Exception):
    """This file is deliberately not indexed; ``str(err)`` is the reason shown to the user."""


@dataclass(frozen=True)
class TextLimits:
    """Per-file bounds on what parsing may produce; ``for_corpus`` derives them from the config."""

    max_text_chars: int = 20_000_000
    max_page_bytes: int = 2_000_000
    max_content_bytes: int = 80_000_000

    @classmethod
    def for_corpus(cls, corpus: CorpusConfig) -> TextLimits:
        text = int(corpus.max_text_ratio * corpus.max_file_mb * 1_000_000)
        return cls(max_text_chars=text, max_page_bytes=int(corpus.max_pdf_page_mb * 1_000_000),
                   max_content_bytes=4 * text)

    def too_much_text(self, what: str) -> SkipFile:
        return SkipFile(f"{what} yields more than {self.max_text_chars / 1e6:g} million characters of text "
                        "(corpus.max_text_ratio x corpus.max_file_mb); split the document, or raise "
                        "corpus.max_text_ratio if it is genuine")


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
    warnings: list[str] = field(default_factory=list)  # indexed anyway, but the user should know


def kind_for(path: str | Path, content_type: str | None = None) -> str | None:
    suffix = Path(str(path).split("?", 1)[0]).suffix.lower()
    if suffix in KINDS:
        return KINDS[suffix]
    if content_type:
        ct = content_type.split(";")[0].strip().lower()
        return {"text/markdown": "markdown", "text/x-markdown": "markdown", "text/plain": "text",
                "text/html": "html", "application/pdf": "pdf", "text/x-rst": "rst"}.get(ct)
    return None


def binary_offset(data: bytes) -> int | None:
    """Where binary data starts, by 8 KiB windows over the whole file: the first window with a
    NUL byte or more than 10% control characters. None for text. Every window is looked at,
    so text with an archive or image appended after its first 8 KiB is caught too."""
    for start in range(0, len(data), _BINARY_SNIFF):
        window = data[start:start + _BINARY_SNIFF]
        if b"\x00" in window:
            return start
        controls = len(window) - len(window.translate(None, _CONTROL_BYTES))
        if controls / len(window) > 0.10:
            return start
    return None


def looks_binary(data: bytes) -> bool:
    """NUL bytes or mostly control characters in any 8 KiB window of ``data``."""
    return binary_offset(data) is not None


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 (BOM optional), UTF-16 with BOM, else Latin-1. Binary -> SkipFile."""
    text, enc, _ = decode_text_counted(data)
    return text, enc


def decode_text_counted(data: bytes) -> tuple[str, str, int]:
    """(text, encoding, invalid UTF-8 sequences replaced). UTF-8 text with a few bad bytes stays
    UTF-8 (each bad sequence becomes U+FFFD and is counted); only text with no valid UTF-8
    beyond ASCII and more than that many bad bytes is read as Latin-1 (a legacy 8-bit file)."""
    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8", errors="replace")
        return text, "utf-8-sig", text.count("\ufffd") - data.count(_UTF8_REPLACEMENT)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16", 0
        except UnicodeDecodeError:
            raise SkipFile("starts with a UTF-16 byte-order mark but is not valid UTF-16") from None
    at = binary_offset(data)
    if at is not None:
        raise SkipFile("binary file (not text)" if at == 0 else f"binary file (not text): binary data from byte {at}")
    try:
        return data.decode("utf-8"), "utf-8", 0
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count(_UTF8_REPLACEMENT)
    non_ascii = len(text) - len(text.encode("ascii", errors="ignore")) - text.count("\ufffd")
    if non_ascii >= bad:  # real UTF-8 with a few bad bytes: Latin-1 would garble all of it
        return text, "utf-8", bad
    return data.decode("latin-1"), "latin-1", 0


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_bytes(data: bytes, kind: str, name: str = "", limits: TextLimits | None = None) -> ParsedDoc:
    limits = limits or TextLimits()
    if not data.strip():
        raise SkipFile("empty file")
    if kind == "pdf":
        return parse_pdf(data, name, limits)
    text, enc, bad = decode_text_counted(data)
    text = _normalize(text)
    if kind == "html":
        doc = parse_html(text)
        doc.encoding = enc
    elif not text.strip():
        raise SkipFile("no text")
    else:
        doc = ParsedDoc(text=text, kind=kind, encoding=enc)
    if len(doc.text) > limits.max_text_chars:
        raise limits.too_much_text("the file")
    if bad:
        doc.warnings.append(f"{bad} invalid UTF-8 byte sequence{'s' if bad > 1 else ''} replaced with U+FFFD")
    return doc


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
class _TextCapReached(Exception):
    """Raised from pypdf's text visitor to stop extraction the moment the cap is passed."""


def _flate_over(stream: object, limit: int) -> int | None:
    """For a plain /FlateDecode stream: its decoded size when that passes ``limit``, found by
    inflating at most ``limit + 1`` bytes (a 70 MB bomb costs 2 MB, not 70); else None."""
    import zlib

    filt = stream.get("/Filter")  # type: ignore[attr-defined]
    raw = getattr(stream, "_data", None)
    if filt != "/FlateDecode" or stream.get("/DecodeParms") is not None or not isinstance(raw, bytes):  # type: ignore[attr-defined]
        return None
    try:
        out = zlib.decompressobj().decompress(raw, limit + 1)
    except zlib.error:
        return None  # damaged: pypdf's own reader decides
    return len(out) if len(out) > limit else None


def _content_bytes(page: object, limit: int) -> int:
    """Decoded size of a page's content streams plus the form XObjects it can draw (one level;
    pypdf bounds how often forms are invoked). A plain Flate stream past ``limit`` is caught
    before it is decoded in full; other filters are decoded under pypdf's own limits."""
    from pypdf.generic import ArrayObject, ContentStream

    raw_contents = page.get("/Contents")  # type: ignore[attr-defined]
    if raw_contents is not None:
        obj = raw_contents.get_object()
        for part in (obj if isinstance(obj, ArrayObject) else [obj]):
            over = _flate_over(part.get_object(), limit)
            if over is not None:
                return over
    total = 0
    contents = page.get_contents()  # type: ignore[attr-defined]
    if contents is not None:
        total += len(contents.get_data() if isinstance(contents, ContentStream) else contents.get_object().get_data())
    resources = page.get("/Resources")  # type: ignore[attr-defined]
    xobjects = resources.get_object().get("/XObject") if resources is not None else None
    if xobjects is not None:
        for ref in xobjects.get_object().values():
            xo = ref.get_object()
            if xo.get("/Subtype") == "/Form":
                over = _flate_over(xo, limit)
                total += over if over is not None else len(xo.get_data())
    return total


def parse_pdf(data: bytes, name: str = "", limits: TextLimits | None = None) -> ParsedDoc:
    """Pages with text, extracted one at a time within ``limits``: a page is measured before
    pypdf parses it, and extraction stops inside a page once the file's text cap is passed."""
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError

    limits = limits or TextLimits()
    chars = 0

    def visit(text: str, *_: object) -> None:
        nonlocal chars
        chars += len(text)
        if chars > limits.max_text_chars:
            raise _TextCapReached

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
        content = 0
        for i, page in enumerate(reader.pages, start=1):
            size = _content_bytes(page, limits.max_page_bytes)
            if size > limits.max_page_bytes:
                raise SkipFile(f"PDF page {i} holds over {limits.max_page_bytes / 1e6:g} MB of drawing instructions "
                               "(corpus.max_pdf_page_mb): a decompression bomb or a huge drawing; raise "
                               "corpus.max_pdf_page_mb if the file is genuine")
            content += size
            if content > limits.max_content_bytes:
                raise SkipFile(f"PDF pages 1-{i} hold over {limits.max_content_bytes / 1e6:g} MB of drawing "
                               "instructions (4 x the text cap, corpus.max_text_ratio x corpus.max_file_mb)")
            text = _normalize(page.extract_text(visitor_text=visit) or "")
            if text.strip():
                pages.append((i, text))
    except (IngestError, SkipFile):
        raise
    except _TextCapReached:
        raise limits.too_much_text("the PDF") from None
    except LimitReachedError as err:
        raise SkipFile(f"PDF exceeds a pypdf safety limit ({err}): a decompression bomb or a damaged file") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, IndexError,
            RecursionError, AssertionError, ZeroDivisionError) as err:
        raise IngestError(f"cannot read PDF ({type(err).__name__}: {err}); the file may be truncated or damaged") from None
    if not pages:
        raise SkipFile("PDF has no extractable text (scanned images? run OCR first)")
    if sum(len(t) for _, t in pages) + 2 * (len(pages) - 1) > limits.max_text_chars:
        raise limits.too_much_text("the PDF")
    title = ""
    try:
        if reader.metadata and reader.metadata.title:
            title = str(reader.metadata.title)
    except Exception:  # noqa: BLE001 - metadata is optional
        title = ""
    return ParsedDoc(text="\n\n".join(t for _, t in pages), kind="pdf", title=title or Path(name).stem, pages=pages)


def read_file(path: Path, max_bytes: int, limits: TextLimits | None = None) -> tuple[bytes, ParsedDoc]:
    """Read and parse ``path``; SkipFile/IngestError on the reasons above."""
    from rag.ingest.reading import read_regular

    kind = kind_for(path)
    if kind is None:
        raise SkipFile(f"unsupported file type '{path.suffix or path.name}'")
    data, _ = read_regular(path, max_bytes)
    return data, parse_bytes(data, kind, path.name, limits)
