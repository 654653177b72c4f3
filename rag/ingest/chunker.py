"""Heading-aware, token-budgeted chunking.

A document becomes blocks (headings, paragraphs, fenced code, tables), blocks group into
sections under a heading path ("Guide > Install > Ports"), and each section packs into
chunks of at most ``budget`` tokens, counted with the embedding model's tokenizer (any
``count(text) -> int`` works, so tests can use a word counter). Chunks never cross a heading;
code blocks and tables stay whole when they fit; prose neighbours share ``overlap`` tokens.
Chunk ids are sha256(source + UTF-8 byte span of the parsed text): stable across runs.

Linear in the input: hostile shapes (one 16 MB line, thousands of PDF pages, a huge run of
blank lines or a word with no spaces) never make a pass re-scan the text. A piece longer
than ``MAX_CHARS_PER_TOKEN`` x budget characters is split before it is tokenized, word
splits find each chunk's end with a few token counts (not one per word), and no chunk spans
more than that many characters, whatever the tokenizer says.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.ingest.parsers import ParsedDoc

CountFn = Callable[[str], int]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*)$")  # closing #s stripped in _atx_title (no backtracking)
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
_TXT_NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+\S")
_SENTENCE = re.compile(r"(?<=[.!?:;])\s+(?=\S)|\n")
_NEWLINE = re.compile(r"\n")
_WORD = re.compile(r"\S+")
_NOT_SPACE = re.compile(r"\S")
MAX_HEADING_CHARS = 300  # a longer line is text, never a heading (it would ride along with every chunk)
MAX_CHARS_PER_TOKEN = 32  # chunks span at most budget x this many characters


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
    context: str = ""  # document-level context (rag.ingest.context): embedded and indexed, never shown


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
        atx = _ATX.match(line) if len(line) <= MAX_HEADING_CHARS else None
        if atx:
            blocks.append(Block("heading", i, i + 1, len(atx.group(1)), _atx_title(atx.group(2))))
            i += 1
            continue
        if setext and i + 1 < hi and len(line) <= MAX_HEADING_CHARS and _SETEXT.match(lines[i + 1]) \
                and not line.lstrip().startswith(("|", "-", "*")):
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
        while j < hi and lines[j].strip() and not _FENCE.match(lines[j]) and not (j > i and _is_atx(lines[j])):
            if j > i and lines[j].lstrip().startswith("|") and not lines[j - 1].lstrip().startswith("|"):
                break
            if setext and j + 1 < hi and j > i and len(lines[j]) <= MAX_HEADING_CHARS and _SETEXT.match(lines[j + 1]) \
                    and lines[j + 1].strip().startswith("="):
                break
            j += 1
        blocks.append(Block("para", i, j))
        i = j
    return blocks


def _atx_title(rest: str) -> str:
    """Title of an ATX heading: the optional closing run of '#' and the spaces around it go."""
    return rest.rstrip(" \t").rstrip("#").rstrip(" \t").strip()


def _is_atx(line: str) -> bool:
    return len(line) <= MAX_HEADING_CHARS and _ATX.match(line) is not None


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
        if _RST_ADORN.match(line) and i + 2 < n and lines[i + 1].strip() and len(lines[i + 1]) <= MAX_HEADING_CHARS \
                and _RST_ADORN.match(lines[i + 2]) and lines[i + 2].strip()[0] == line.strip()[0]:
            blocks.append(Block("heading", i, i + 3, level_of((line.strip()[0], True)), lines[i + 1].strip()))
            i += 3
            continue
        if i + 1 < n and not line.startswith((" ", "\t")) and len(line) <= MAX_HEADING_CHARS and _RST_ADORN.match(lines[i + 1]) \
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
        stripped = first.strip() if len(first) <= MAX_HEADING_CHARS else ""
        caps = len(stripped) <= 80 and any(c.isalpha() for c in stripped) and stripped.upper() == stripped
        if b.kind == "para" and caps and not first.startswith((" ", "\t")):
            m = _TXT_NUMBERED.match(stripped)
            level = 1 + len(m.group(1).split(".")) if m else 1
            out.append(Block("heading", b.start, b.start + 1, level, stripped))
            if b.end > b.start + 1:
                out.append(Block("para", b.start + 1, b.end))
        else:
            out.append(b)
    return out


# --- splitting and packing -------------------------------------------------------------------
def line_starts_of(lines: list[str]) -> list[int]:
    """Character offset of each line of ``"\\n".join(lines)``."""
    starts = [0]
    for ln in lines[:-1]:
        starts.append(starts[-1] + len(ln) + 1)
    return starts


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
        self.max_chars = budget * MAX_CHARS_PER_TOKEN
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
        line_starts = line_starts_of(lines)
        del lines
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
        return _finish(specs, text, source, line_starts)

    def _chunk_pdf(self, doc: ParsedDoc, source: str) -> list[ChunkSpec]:
        """Each page is packed on its own (no chunk crosses a page); the text is split into
        lines once for the whole document and each page is located from the previous one."""
        specs: list[ChunkSpec] = []
        offset = 0
        text = doc.text
        lines = text.split("\n")
        line_starts = line_starts_of(lines)
        for page_no, page_text in doc.pages:
            start = offset if text.startswith(page_text, offset) else text.index(page_text, offset)
            lo = bisect.bisect_right(line_starts, start) - 1
            hi = bisect.bisect_right(line_starts, start + len(page_text) - 1)
            blocks = _md_blocks(lines, lo, hi, setext=False)
            blocks = [Block("para" if b.kind == "heading" else b.kind, b.start, b.end) for b in blocks]
            for s in self._pack(text, line_starts, blocks, doc.title, source, page_no):
                s.start_line = s.end_line = page_no
                specs.append(s)
            offset = start + len(page_text)
        return _finish(specs, text, source, line_starts)

    def _fit(self, text: str, start: int, end: int) -> int | None:
        """Tokens of text[start:end] when it fits one chunk (budget and characters), else None.
        Text over the character bound is never tokenized: it is split first."""
        if end - start > self.max_chars:
            return None
        n = self.count(text[start:end])
        return n if n <= self._limit else None

    def _units(self, text: str, line_starts: list[int], blocks: list[Block]) -> list[_Unit]:
        units: list[_Unit] = []
        last = len(line_starts) - 1
        for b in blocks:
            start = line_starts[b.start]
            end = line_starts[b.end] - 1 if b.end <= last else len(text)  # end of line b.end - 1
            n = self._fit(text, start, end)
            if n is not None:
                units.append(_Unit(start, end, n, b.kind))
            else:
                units.extend(self._split(text, start, end, b.kind))
        return units

    def _split(self, text: str, start: int, end: int, kind: str) -> list[_Unit]:
        """Pieces of an oversized block: lines for code/tables, sentences for prose, then words."""
        sep = _NEWLINE if kind in ("code", "table") else _SENTENCE
        units: list[_Unit] = []
        pos = start
        for m in sep.finditer(text, start, end):
            if m.start() > pos:
                self._piece(text, pos, m.start(), units)
            pos = m.end()
        if pos < end:
            self._piece(text, pos, end, units)
        return units

    def _piece(self, text: str, a: int, b: int, units: list[_Unit]) -> None:
        if _NOT_SPACE.search(text, a, b) is None:
            return
        n = self._fit(text, a, b)
        if n is not None:
            units.append(_Unit(a, b, n, "para"))
        else:
            units.extend(self._split_words(text, a, b))

    def _split_words(self, text: str, start: int, end: int) -> list[_Unit]:
        """Runs of whole words, each the longest that fits or filling 90% of the budget; a word
        that fits no chunk on its own is cut by characters. Each run's end is found by a search over the word ends in
        one chunk's reach (a few token counts per run), so the cost is linear in the text."""
        units: list[_Unit] = []
        pos = start
        aim = max(1, self._limit * 19 // 20)
        guess = self._limit * 4  # characters per run; learned from each run
        while True:
            first = _WORD.search(text, pos, end)
            if first is None:
                return units
            pos = first.start()
            reach = min(end, pos + self.max_chars)
            ends = [m.end() for m in _WORD.finditer(text, pos, reach)]
            if ends and ends[-1] == reach and reach < end and not text[reach].isspace():
                ends.pop()  # that word runs past the reach
            k, n = self._longest_fit(text, pos, ends, pos + guess)
            if k < 0:  # the first word alone does not fit
                units.extend(self._split_chars(text, pos, first.end()))
                pos = first.end()
                continue
            units.append(_Unit(pos, ends[k], n, "para"))
            guess = max(1, (ends[k] - pos) * aim // max(n, 1))
            pos = ends[k]

    def _split_chars(self, text: str, start: int, end: int) -> list[_Unit]:
        """A word longer than a chunk (a base64 blob, 16 MB without a space) cut into pieces."""
        units: list[_Unit] = []
        pos = start
        aim = max(1, self._limit * 19 // 20)
        guess = self._limit * 4
        while pos < end:
            cuts = range(pos + 1, min(end, pos + self.max_chars) + 1)
            k, n = self._longest_fit(text, pos, cuts, pos + guess)
            k, n = (k, n) if k >= 0 else (0, self.count(text[pos:pos + 1]))  # one char, whatever it costs
            units.append(_Unit(pos, cuts[k], n, "para"))
            guess = max(1, (cuts[k] - pos) * aim // max(n, 1))
            pos = cuts[k]
        return units

    def _longest_fit(self, text: str, pos: int, ends: Sequence[int], target: int) -> tuple[int, int]:
        """(index, tokens) of one of the increasing ``ends`` with text[pos:end] within the budget
        and either the last such or filling 90% of it; (-1, 0) when none fits. Interpolates from
        the tokens per character seen (aiming at 95%), and bisects once guesses stop closing in,
        so a run costs one or two counts, not one per word."""
        lo, lo_n, hi = -1, 0, len(ends)
        if hi == 0:
            return lo, lo_n
        aim = max(1, self._limit * 19 // 20)
        k = min(max(bisect.bisect_left(ends, target), 0), hi - 1)
        for probe in range(64):
            n = self.count(text[pos:ends[k]])
            if n <= self._limit:
                lo, lo_n = k, n
            else:
                hi = k
            if hi - lo <= 1 or lo_n * 10 >= self._limit * 9:
                break
            if probe < 3:  # interpolate: where the aim would be reached at this density
                est = pos + (ends[k] - pos) * aim // max(n, 1)
                k = bisect.bisect_right(ends, est) - 1
                k = min(max(k, lo + 1), hi - 1)
            else:
                k = (lo + hi) // 2
        return lo, lo_n

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
            if cur and (total + u.tokens > self._limit or u.end - cur[0].start > self.max_chars):
                groups.append(cur)
                carry: list[_Unit] = []
                carried = 0
                for prev in reversed(cur):
                    if prev.kind != "para" or carried + prev.tokens > self.overlap or \
                            carried + prev.tokens + u.tokens > self._limit or u.end - prev.start > self.max_chars:
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


def _finish(specs: list[ChunkSpec], text: str, source: str, line_starts: list[int]) -> list[ChunkSpec]:
    """Fill byte spans, line numbers and ids, in one pass over the text: the UTF-8 length of
    each stretch between consecutive chunk boundaries is added up, never re-encoded from the
    start of a line (a single 16 MB line would make that quadratic)."""
    byte_of: dict[int, int] = {}
    if text.isascii():
        byte_of = {o: o for s in specs for o in (s.start_char, s.end_char)}
    else:
        prev_c = prev_b = 0
        for o in sorted({o for s in specs for o in (s.start_char, s.end_char)}):
            prev_b += len(text[prev_c:o].encode("utf-8"))
            prev_c = o
            byte_of[o] = prev_b
    for s in specs:
        s.byte_start = byte_of[s.start_char]
        s.byte_end = byte_of[s.end_char]
        if s.page is None:
            s.start_line = bisect.bisect_right(line_starts, s.start_char)
            s.end_line = bisect.bisect_right(line_starts, max(s.start_char, s.end_char - 1))
        s.chunk_id = chunk_id_for(source, s.byte_start, s.byte_end)
    return specs
