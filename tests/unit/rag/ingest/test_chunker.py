"""Chunker: heading paths, code blocks and tables, budgets, overlap, stable ids, line numbers."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.ingest.chunker import Chunker, _md_blocks
from rag.ingest.parsers import ParsedDoc


def words(text: str) -> int:
    return len(text.split())


MD = """# Guide

Intro paragraph about the guide.

## Install

Run the installer on the host.

### Ports

The gateway listens on port 7431.

```bash
# not a heading
kxctl config check

kxctl restart
```

| Port | Use |
|------|-----|
| 7431 | ingest |

## Usage

Use it well.
"""


def chunk(text: str, kind: str = "markdown", budget: int = 200, overlap: int = 0, source: str = "doc.md"):
    return Chunker(words, budget, overlap).chunk(ParsedDoc(text=text, kind=kind), source)


def test_heading_paths_and_lines() -> None:
    specs = chunk(MD)
    headings = [s.heading for s in specs]
    assert headings == ["Guide", "Guide > Install", "Guide > Install > Ports", "Guide > Usage"]
    ports = specs[2]
    lines = MD.split("\n")
    assert lines[ports.start_line - 1] == "### Ports"
    assert lines[ports.end_line - 1] == "| 7431 | ingest |"
    assert "# not a heading" in ports.text  # a '#' inside a fence is code, not a heading
    assert ports.text == MD[ports.start_char:ports.end_char]


def test_code_block_and_table_kept_whole_when_they_fit() -> None:
    specs = chunk(MD, budget=20)
    code = [s for s in specs if "kxctl config check" in s.text]
    assert len(code) == 1
    assert code[0].text.count("```") == 2  # opening and closing fence in one chunk
    tables = [s for s in specs if "|------|" in s.text]
    assert len(tables) == 1 and "| 7431 | ingest |" in tables[0].text


def test_budget_respected_and_oversized_paragraph_split() -> None:
    para = " ".join(f"w{i}." for i in range(500))
    text = f"# Big\n\n{para}\n"
    specs = chunk(text, budget=50, overlap=10)
    assert len(specs) > 10
    assert all(s.n_tokens <= 50 for s in specs)
    assert all(words(s.text) <= 50 for s in specs)
    covered = " ".join(s.text for s in specs)
    assert all(f"w{i}." in covered for i in range(500))


def test_overlap_shares_prose_between_neighbours() -> None:
    sentences = " ".join(f"Sentence number {i} is here." for i in range(60))
    specs = chunk(f"# T\n\n{sentences}\n", budget=40, overlap=10)
    assert len(specs) >= 3
    for a, b in zip(specs, specs[1:], strict=False):
        assert b.start_char < a.end_char  # spans overlap
        assert b.n_tokens <= 40


def test_no_overlap_when_zero() -> None:
    sentences = " ".join(f"Sentence number {i} is here." for i in range(60))
    specs = chunk(f"# T\n\n{sentences}\n", budget=40, overlap=0)
    for a, b in zip(specs, specs[1:], strict=False):
        assert b.start_char >= a.end_char


def test_ids_stable_and_match_contract() -> None:
    a = chunk(MD, source="docs/guide.md")
    b = chunk(MD, source="docs/guide.md")
    assert [s.chunk_id for s in a] == [s.chunk_id for s in b]
    s = a[1]
    raw = MD.encode()
    assert raw[s.byte_start:s.byte_end].decode() == s.text
    assert s.chunk_id == hashlib.sha256(f"docs/guide.md\x00{s.byte_start}:{s.byte_end}".encode()).hexdigest()
    other = chunk(MD, source="docs/other.md")
    assert not {x.chunk_id for x in a} & {x.chunk_id for x in other}
    assert len({x.chunk_id for x in a}) == len(a)


def test_byte_spans_with_multibyte_text() -> None:
    text = "# Über\n\nGrüße aus Köln — ünïcødé.\n\n## Zwei\n\nNoch ein Absatz mit ß.\n"
    for s in chunk(text):
        assert text.encode()[s.byte_start:s.byte_end].decode() == s.text


def test_setext_and_front_matter() -> None:
    text = "---\ntitle: x\n---\nTitle\n=====\n\nBody one.\n\nSub\n---\n\nBody two.\n"
    specs = chunk(text)
    assert [s.heading for s in specs] == ["Title", "Title > Sub"]
    assert "title: x" not in " ".join(s.text for s in specs)


def test_heading_only_sections_make_no_chunk() -> None:
    specs = chunk("# A\n\n## B\n\nText under B.\n")
    assert [s.heading for s in specs] == ["A > B"]


def test_rst_headings_and_literal_blocks() -> None:
    text = (
        "=====\nGuide\n=====\n\nIntro text.\n\nInstall\n=======\n\nRun this::\n\n    kxctl install\n\n"
        "    kxctl check\n\nSteps\n-----\n\nStep text.\n\nOther\n=====\n\nOther text.\n"
    )
    specs = chunk(text, kind="rst")
    assert [s.heading for s in specs] == ["Guide", "Guide > Install", "Guide > Install > Steps", "Guide > Other"]
    install = specs[1]
    assert "kxctl install" in install.text and "kxctl check" in install.text


def test_plain_text_caps_headings() -> None:
    text = "PRODUCT SPEC\nrev F\n\n1. CHASSIS\n\n   Width .... 438 mm\n\n2. POWER\n\n   Input .... 48 V\n"
    specs = chunk(text, kind="text")
    assert [s.heading for s in specs] == ["PRODUCT SPEC", "PRODUCT SPEC > 1. CHASSIS", "PRODUCT SPEC > 2. POWER"]


def test_pdf_pages_become_line_numbers() -> None:
    pages = [(1, "First page text about ports."), (3, "Third page text about fans.")]
    doc = ParsedDoc(text="\n\n".join(t for _, t in pages), kind="pdf", title="Manual", pages=pages)
    specs = Chunker(words, 50, 0).chunk(doc, "m.pdf")
    assert [(s.page, s.start_line, s.end_line) for s in specs] == [(1, 1, 1), (3, 3, 3)]
    assert specs[1].text == "Third page text about fans."


def test_budget_too_small_rejected() -> None:
    with pytest.raises(ValueError):
        Chunker(words, 4, 0)


md_line = st.one_of(
    st.sampled_from(["# H1", "## H2", "### H3", "```", "| a | b |", "", "- item one", "Title", "====="]),
    st.text(alphabet="abc xyz.!?", min_size=1, max_size=80),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(md_line, max_size=60), st.integers(10, 60), st.integers(0, 8))
def test_chunker_invariants(lines: list[str], budget: int, overlap: int) -> None:
    text = "\n".join(lines)
    specs = chunk(text, budget=budget, overlap=overlap)
    for s in specs:
        assert text[s.start_char:s.end_char] == s.text
        assert text.encode()[s.byte_start:s.byte_end].decode() == s.text
        assert 1 <= s.start_line <= s.end_line <= len(lines)
        assert s.n_tokens <= budget
        assert s.text.strip()
    assert len({s.chunk_id for s in specs}) == len(specs)
    # every character of non-heading content lands in some chunk
    heading_lines = {ln for b in _md_blocks(lines, 0, len(lines)) if b.kind == "heading" for ln in range(b.start, b.end)}
    covered: set[int] = set()
    for s in specs:
        covered.update(range(s.start_char, s.end_char))
    pos = 0
    for n, line in enumerate(lines):
        if n not in heading_lines:
            for j, ch in enumerate(line):
                if not ch.isspace():
                    assert pos + j in covered, (text, n, line)
        pos += len(line) + 1


def test_reserve_heading_keeps_heading_plus_text_in_budget() -> None:
    sentences = " ".join(f"Sentence number {i} is here." for i in range(60))
    text = f"# A long heading of seven words\n\n{sentences}\n"
    specs = Chunker(words, 40, 0, reserve_heading=True).chunk(ParsedDoc(text=text, kind="markdown"), "d.md")
    assert all(words(s.heading) + s.n_tokens <= 40 for s in specs)
    assert any(s.n_tokens > 40 - 8 - 5 for s in specs)  # the rest of the budget is used
