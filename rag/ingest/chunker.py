"""Heading-aware, token-budgeted chunking.

A document becomes blocks (headings, paragraphs, fenced code, tables), blocks group into
sections under a heading path ("Guide > Install > Ports"), and each section packs into
chunks of at most ``budget`` tokens, counted with the embedding model's tokenizer (any
``count(text) -> int`` works, so tests can use a word counter). Chunks never cross a heading;
code blocks and tables stay whole when they fit; prose neighbours share ``overlap`` tokens.
Chunk ids are sha256(source + UTF-8 byte span of the parsed text): stable across runs.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from rag.ingest.parsers import ParsedDoc

CountFn = Callable[[str], int]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_TXT_NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+\S")
_SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=\S)|\n")


@dataclass
class Block:
    kind: str  # heading | code | table | para
    start: int  # line index, inclusive
    end: int  # line index, exclusive
    level: int = 0
    title: str = ""


@dataclass
class ChunkSpec:
    chunk_id: str
    heading: str
    text: str
    start_char: int
    end_char: int
    byte_start: int
    byte_end: int
    start_line: int
    end_line: int
    n_tokens: int
    page: int | None = None


@dataclass
class _Unit:
    start: int  # char offsets
    end: int
    tokens: int
    kind: str  # heading | code | table | para


def chunk_id_for(source: str, byte_start: int, byte_end: int) -> str:
    return hashlib.sha256(f"{source}\x00{byte_start}:{byte_end}".encode()).hexdigest()


# --- block finding ----------------------------------------------------------------------------
def _md_blocks(lines: list[str], lo: int, hi: int, setext: bool = True) -> list[Block]:
    blocks: list[Block] = []
    i = lo
    if lo == 0 and hi > 0 and lines[0].strip() == "---":  # YAML front matter: not content
        for j in range(1, min(hi, 200)):
            if lines[j].strip() in ("---", "..."):
                i = j + 1
                break
    while i < hi:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            mark = fence.group(1)
            j = i + 1
            while j < hi and not lines[j].lstrip().startswith(mark[0] * len(mark)):
                j += 1
            blocks.append(Block("code", i, min(j + 1, hi)))
            i = j + 1
            continue
        atx = _ATX.match(line)
        if atx:
            blocks.append(Block("heading", i, i + 1, len(atx.group(1)), atx.group(2).strip()))
            i += 1
            continue
        if setext and i + 1 < hi and _SETEXT.match(lines[i + 1]) and not line.lstrip().startswith(("|", "-", "*")):
            level = 1 if lines[i + 1].strip().startswith("=") else 2
            blocks.append(Block("heading", i, i + 2, level, line.strip()))
            i += 2
            continue
        if line.lstrip().startswith("|"):
            j = i
            while j < hi and lines[j].lstrip().startswith("|"):
                j += 1
            blocks.append(Block("table", i, j))
            i = j
            continue
        j = i
        while j < hi and lines[j].strip() and not _FENCE.match(lines[j]) and not (j > i and _ATX.match(lines[j])):
            if j > i and lines[j].lstrip().startswith("|") and not lines[j - 1].lstrip().startswith("|"):
                break
            if setext and j + 1 < hi and j > i and _SETEXT.match(lines[j + 1]) and lines[j + 1].strip().startswith("="):
                break
            j += 1
        blocks.append(Block("para", i, j))
        i = j
    return blocks


def _rst_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    styles: list[tuple[str, bool]] = []
    n = len(lines)
    i = 0

    def level_of(style: tuple[str, bool]) -> int:
        if style not in styles:
            styles.append(style)
        return styles.index(style) + 1

    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        # overline + title + underline
        if _RST_ADORN.match(line) and i + 2 < n and lines[i + 1].strip() and _RST_ADORN.match(lines[i + 2]) \
                and lines[i + 2].strip()[0] == line.strip()[0]:
            blocks.append(Block("heading", i, i + 3, level_of((line.strip()[0], True)), lines[i + 1].strip()))
            i += 3
            continue
        if i + 1 < n and not line.startswith((" ", "\t")) and _RST_ADORN.match(lines[i + 1]) \
                and len(lines[i + 1].strip()) >= len(line.strip()) and not _RST_ADORN.match(line):
            blocks.append(Block("heading", i, i + 2, level_of((lines[i + 1].strip()[0], False)), line.strip()))
            i += 2
            continue
        if line.lstrip().startswith("+-") or line.lstrip().startswith("+="):
            j = i
            while j < n and lines[j].lstrip()[:1] in ("+", "|"):
                j += 1
            blocks.append(Block("table", i, j))
            i = j
            continue
        # paragraph, directive or literal block: extends over indented continuation lines
        is_directive = line.startswith(".. ")
        j = i + 1
        while j < n and lines[j].strip():
            j += 1
        literal = is_directive or lines[j - 1].rstrip().endswith("::")
        if literal:
            k = j
            while k < n and (not lines[k].strip() or lines[k].startswith((" ", "\t"))):
                k += 1
            while k > j and not lines[k - 1].strip():
                k -= 1
            j = k
        kind = "code" if literal and (not is_directive or re.match(r"\.\. (code|code-block|sourcecode|list-table|csv-table|table)::", line)) else "para"
        if kind == "code" and is_directive and "table" in line.split("::")[0]:
            kind = "table"
        blocks.append(Block(kind, i, j))
        i = j
    return blocks


def _txt_blocks(lines: list[str]) -> list[Block]:
    """Markdown-like blocks, plus plain-text headings: short ALL-CAPS lines ("2. POWER")."""
    out: list[Block] = []
    for b in _md_blocks(lines, 0, len(lines), setext=True):
        first = lines[b.start]
        stripped = first.strip()
        caps = any(c.isalpha() for c in stripped) and stripped.upper() == stripped
        if b.kind == "para" and caps and len(stripped) <= 80 and not first.startswith((" ", "\t")):
            m = _TXT_NUMBERED.match(stripped)
            level = 1 + len(m.group(1).split(".")) if m else 1
            out.append(Block("heading", b.start, b.start + 1, level, stripped))
            if b.end > b.start + 1:
                out.append(Block("para", b.start + 1, b.end))
        else:
            out.append(b)
    return out


# --- splitting and packing -------------------------------------------------------------------
class Chunker:
    def __init__(self, count: CountFn, budget: int = 256, overlap: int = 32, reserve_heading: bool = False):
        """``reserve_heading``: the heading path is embedded with each chunk, so its tokens come
        out of the budget (at most half of it) and heading + text fit the model's window."""
        if budget < 8:
            raise ValueError("budget must be at least 8 tokens")
        self.count = count
        self.budget = budget
        self.reserve_heading = reserve_heading
        self._limit = budget
        self.overlap = max(0, min(overlap, budget // 2))

    def chunk(self, doc: ParsedDoc, source: str) -> list[ChunkSpec]:
        text = doc.text
        if doc.kind == "pdf":
            return self._chunk_pdf(doc, source)
        lines = text.split("\n")
        if doc.kind == "markdown":
            blocks = _md_blocks(lines, 0, len(lines))
        elif doc.kind == "rst":
            blocks = _rst_blocks(lines)
        else:
            blocks = _txt_blocks(lines)
        line_starts = [0]
        for ln in lines[:-1]:
            line_starts.append(line_starts[-1] + len(ln) + 1)
        specs: list[ChunkSpec] = []
        stack: list[tuple[int, str]] = []
        section: list[Block] = []

        def flush() -> None:
            if any(b.kind != "heading" for b in section):
                path = " > ".join(t for _, t in stack) or (doc.title or "")
                specs.extend(self._pack(text, line_starts, section, path, source, None))
            section.clear()

        for b in blocks:
            if b.kind == "heading":
                flush()
                while stack and stack[-1][0] >= b.level:
                    stack.pop()
                stack.append((b.level, _clean_title(b.title)))
            section.append(b)
        flush()
        return _finish(specs, text, source)

    def _chunk_pdf(self, doc: ParsedDoc, source: str) -> list[ChunkSpec]:
        specs: list[ChunkSpec] = []
        offset = 0
        text = doc.text
        for page_no, page_text in doc.pages:
            start = text.index(page_text, offset)
            lines = text.split("\n")
            line_starts = [0]
            for ln in lines[:-1]:
                line_starts.append(line_starts[-1] + len(ln) + 1)
            lo = bisect.bisect_right(line_starts, start) - 1
            hi = bisect.bisect_right(line_starts, start + len(page_text) - 1)
            blocks = _md_blocks(lines, lo, hi, setext=False)
            blocks = [Block("para" if b.kind == "heading" else b.kind, b.start, b.end) for b in blocks]
            for s in self._pack(text, line_starts, blocks, doc.title, source, page_no):
                s.start_line = s.end_line = page_no
                specs.append(s)
            offset = start + len(page_text)
        return _finish(specs, text, source)

    def _units(self, text: str, line_starts: list[int], blocks: list[Block]) -> list[_Unit]:
        units: list[_Unit] = []
        for b in blocks:
            start = line_starts[b.start]
            end = line_starts[b.end - 1] + len(text[line_starts[b.end - 1]:].split("\n", 1)[0])
            n = self.count(text[start:end])
            if n <= self._limit:
                units.append(_Unit(start, end, n, b.kind))
            else:
                units.extend(self._split(text, start, end, b.kind))
        return units

    def _split(self, text: str, start: int, end: int, kind: str) -> list[_Unit]:
        """Pieces of an oversized block: lines for code/tables, sentences for prose, then words."""
        sep = re.compile(r"\n") if kind in ("code", "table") else _SENTENCE
        pieces: list[tuple[int, int]] = []
        pos = start
        for m in sep.finditer(text, start, end):
            if m.start() > pos:
                pieces.append((pos, m.start()))
            pos = m.end()
        if pos < end:
            pieces.append((pos, end))
        units: list[_Unit] = []
        for a, b in pieces:
            if not text[a:b].strip():
                continue
            n = self.count(text[a:b])
            if n <= self._limit:
                units.append(_Unit(a, b, n, "para"))
            else:
                units.extend(self._split_words(text, a, b))
        return units

    def _split_words(self, text: str, start: int, end: int) -> list[_Unit]:
        words = [(m.start(), m.end(), self.count(m.group())) for m in re.finditer(r"\S+", text[start:end])]
        units: list[_Unit] = []
        i = 0
        while i < len(words):
            total, j = 0, i
            while j < len(words) and (total + words[j][2] <= self._limit or j == i):
                total += words[j][2]
                j += 1
            units.append(_Unit(start + words[i][0], start + words[j - 1][1], total, "para"))
            i = j
        return units

    def _pack(self, text: str, line_starts: list[int], blocks: list[Block], heading: str, source: str,
              page: int | None) -> list[ChunkSpec]:
        self._limit = self.budget
        if self.reserve_heading and heading:
            self._limit = self.budget - min(self.count(heading) + 1, self.budget // 2)
        units = self._units(text, line_starts, blocks)
        groups: list[list[_Unit]] = []
        cur: list[_Unit] = []
        total = 0
        for u in units:
            if cur and total + u.tokens > self._limit:
                groups.append(cur)
                carry: list[_Unit] = []
                carried = 0
                for prev in reversed(cur):
                    if prev.kind != "para" or carried + prev.tokens > self.overlap or \
                            carried + prev.tokens + u.tokens > self._limit:
                        break
                    carry.insert(0, prev)
                    carried += prev.tokens
                cur, total = carry, carried
            cur.append(u)
            total += u.tokens
        if cur and any(u.kind != "heading" for u in cur):
            groups.append(cur)
        out = []
        for g in groups:
            a, b = g[0].start, g[-1].end
            out.append(ChunkSpec("", heading, text[a:b], a, b, 0, 0, 0, 0, sum(u.tokens for u in g), page))
        return out


def _clean_title(title: str) -> str:
    t = re.sub(r"`([^`]*)`", r"\1", title)
    t = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", t)
    return re.sub(r"[*_]{1,2}([^*_]+)[*_]{1,2}", r"\1", t).strip()


def _finish(specs: list[ChunkSpec], text: str, source: str) -> list[ChunkSpec]:
    """Fill byte spans, line numbers and ids."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line_bytes = [0]
    for a, b in zip(line_starts, line_starts[1:], strict=False):
        line_bytes.append(line_bytes[-1] + len(text[a:b].encode("utf-8")))

    def byte_at(ch: int) -> int:
        li = bisect.bisect_right(line_starts, ch) - 1
        return line_bytes[li] + len(text[line_starts[li]:ch].encode("utf-8"))

    for s in specs:
        s.byte_start = byte_at(s.start_char)
        s.byte_end = byte_at(s.end_char)
        if s.page is None:
            s.start_line = bisect.bisect_right(line_starts, s.start_char)
            s.end_line = bisect.bisect_right(line_starts, max(s.start_char, s.end_char - 1))
        s.chunk_id = chunk_id_for(source, s.byte_start, s.byte_end)
    return specs
