"""Hostile inputs to the parsers, the reader and the chunker, each built here: PDF bombs, a text
cap, non-regular files, one bad UTF-8 byte, binary after the first 8 KiB, and shapes that used
to make chunking quadratic (one huge line, a word with no spaces, thousands of PDF pages)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pdf_builder import make_content_pdf, text_ops

from rag.config import CorpusConfig
from rag.ingest.chunker import MAX_CHARS_PER_TOKEN, Chunker
from rag.ingest.parsers import (
    ParsedDoc,
    SkipFile,
    TextLimits,
    decode_text,
    decode_text_counted,
    parse_bytes,
    parse_pdf,
)
from rag.ingest.reading import read_regular


def words(text: str) -> int:
    return len(text.split())


class Counting:
    """A word counter that records how often, and on how much text, it was called."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return len(text.split())


# --- limits from the config -------------------------------------------------------------------
def test_limits_follow_the_config() -> None:
    lim = TextLimits.for_corpus(CorpusConfig(max_file_mb=5, max_text_ratio=2, max_pdf_page_mb=0.5))
    assert lim == TextLimits(max_text_chars=10_000_000, max_page_bytes=500_000, max_content_bytes=40_000_000)
    assert TextLimits.for_corpus(CorpusConfig()).max_text_chars == 20_000_000


# --- PDF bombs --------------------------------------------------------------------------------
def test_pdf_page_that_decodes_past_the_page_cap_is_skipped_before_parsing() -> None:
    bomb = text_ops("The heron pump runs at 1450 rpm and more words here", repeat=40_000)  # 3.3 MB decoded
    data = make_content_pdf([text_ops("A normal first page."), bomb])
    assert len(data) < 40_000  # a small file...
    with pytest.raises(SkipFile, match=r"PDF page 2 holds over 1 MB of drawing instructions \(corpus\.max_pdf_page_mb\)"):
        parse_pdf(data, "bomb.pdf", TextLimits(max_page_bytes=1_000_000))


def test_pdf_pages_together_past_the_content_cap_are_skipped() -> None:
    page = text_ops("Page text", repeat=2_000)  # 82 KB decoded each
    data = make_content_pdf([page] * 6)
    with pytest.raises(SkipFile, match=r"PDF pages 1-3 hold over 0\.2 MB"):
        parse_pdf(data, "many.pdf", TextLimits(max_page_bytes=1_000_000, max_content_bytes=200_000))


def test_pdf_extraction_stops_at_the_text_cap() -> None:
    pages = [text_ops(f"Page {i} says the osprey valve opens at 37 bar.", repeat=200) for i in range(3)]
    # page 4 is over the page cap: reaching it would give that reason instead, so the text cap
    # must have stopped extraction inside page 2 or 3
    pages.append(text_ops("x" * 60, repeat=50_000))
    data = make_content_pdf(pages)
    with pytest.raises(SkipFile, match=r"the PDF yields more than 0\.01 million characters .*corpus\.max_text_ratio"):
        parse_pdf(data, "long.pdf", TextLimits(max_text_chars=10_000, max_page_bytes=1_000_000))
    doc = parse_pdf(make_content_pdf(pages[:3]), "ok.pdf", TextLimits(max_page_bytes=1_000_000))
    assert [p for p, _ in doc.pages] == [1, 2, 3]


def test_pdf_within_limits_still_parses() -> None:
    data = make_content_pdf([text_ops("The tern relay uses port 5150.")] * 3)
    doc = parse_bytes(data, "pdf", "fine.pdf", TextLimits(max_page_bytes=10_000, max_text_chars=1_000))
    assert [p for p, _ in doc.pages] == [1, 2, 3] and "port 5150" in doc.text


# --- text cap for text files --------------------------------------------------------------------
def test_text_cap_applies_to_text_and_html() -> None:
    lim = TextLimits(max_text_chars=1_000)
    with pytest.raises(SkipFile, match="the file yields more than 0.001 million characters"):
        parse_bytes(b"word " * 300, "text", "a.txt", lim)
    html = b"<html><body><main>" + b"<p>para graph</p>" * 200 + b"</main></body></html>"
    with pytest.raises(SkipFile, match="million characters"):
        parse_bytes(html, "html", "a.html", lim)
    assert parse_bytes(b"word " * 100, "text", "a.txt", lim).text.startswith("word")


# --- encodings and binary ---------------------------------------------------------------------
def test_one_bad_byte_keeps_utf8_and_is_counted() -> None:
    good = "Die Möwe misst 12 °C. Grüße aus Köln.\n" * 50
    data = good.encode("utf-8")
    data = data[:100] + b"\xff" + data[100:]
    text, enc, bad = decode_text_counted(data)
    assert (enc, bad) == ("utf-8", 1)
    assert text.count("Möwe") == 50 and "\ufffd" in text  # not Latin-1 mojibake ("MÃ¶we")
    doc = parse_bytes(data, "text", "a.txt")
    assert doc.warnings == ["1 invalid UTF-8 byte sequence replaced with U+FFFD"]
    two = data[:300] + b"\xc3" + data[300:]
    assert parse_bytes(two, "text").warnings == ["2 invalid UTF-8 byte sequences replaced with U+FFFD"]


def test_a_literal_replacement_character_is_not_counted_as_bad() -> None:
    data = "Already replaced: \ufffd, and ü.\n".encode() + b"\xfe"
    assert decode_text_counted(data)[1:] == ("utf-8", 1)


def test_legacy_latin1_file_still_reads_as_latin1() -> None:
    assert decode_text("Grüße 42 °C, Möwe\n".encode("latin-1")) == ("Grüße 42 °C, Möwe\n", "latin-1")
    assert parse_bytes("Grüße\n".encode("latin-1"), "text").warnings == []


def test_binary_after_the_first_8k_is_detected() -> None:
    head = ("The gannet valve opens at 12 bar.\n" * 400).encode()  # ~13.6 KB of text
    with pytest.raises(SkipFile, match=r"binary file \(not text\): binary data from byte 8192"):
        decode_text(head + bytes(range(256)) * 64)
    far = head * 240  # a NUL 3.2 MB into the file: reported by its 8 KiB window
    with pytest.raises(SkipFile, match=f"binary data from byte {len(far) // 8192 * 8192}$"):
        decode_text(far + b"PK\x03\x04\x14\x00\x00\x00" + head)
    control_only = head + bytes([1, 2, 3, 4, 5, 6, 7, 8]) * 4096  # no NUL, only control bytes
    with pytest.raises(SkipFile, match="binary data from byte 8192"):
        decode_text(control_only)
    assert decode_text(head * 3)[1] == "utf-8"


# --- non-regular files ------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "notes.md"
    os.mkfifo(fifo)
    out: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read_regular(fifo, 10**6)
            out.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            out.append(err)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # it blocked: unblock it so the thread can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(out[0], SkipFile) and "FIFO" in str(out[0]) and "regular files" in str(out[0])


def test_read_regular_limits_and_folders(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"x" * 1000)
    assert read_regular(f, 1000)[0] == b"x" * 1000
    with pytest.raises(SkipFile, match="max_file_mb"):
        read_regular(f, 999)
    with pytest.raises(SkipFile, match="a folder"):
        read_regular(tmp_path, 1000)


# --- chunking stays linear --------------------------------------------------------------------
def test_single_huge_line_is_split_with_few_token_counts() -> None:
    vocab = ["valve", "pump", "relay", "opens", "at", "bar", "sensor", "kelvin"]
    line = " ".join(vocab[i % 7] + str(i % 13) for i in range(200_000))  # ~1.6 MB, no newline, no sentence ends
    count = Counting()
    specs = Chunker(count, 100, 10).chunk(ParsedDoc(text=line, kind="text"), "one.txt")
    assert all(words(s.text) == s.n_tokens <= 100 for s in specs)
    assert sum(s.n_tokens for s in specs) == 200_000  # every word once (no overlap across word runs)
    assert all(s.n_tokens >= 90 for s in specs[:-1])  # runs fill the budget
    assert [(s.start_line, s.end_line) for s in specs[:2]] == [(1, 1), (1, 1)]
    # no re-scanning: a few counts per chunk, over about the text once or twice
    assert count.calls <= 3 * len(specs) and count.chars <= 3 * len(line)


def test_word_without_spaces_is_cut_by_characters() -> None:
    blob = "QUJD" * 50_000  # 200 KB, one "word" (a base64 blob)
    text = f"# Blob\n\nbefore {blob} after\n"
    specs = Chunker(words, 64, 0).chunk(ParsedDoc(text=text, kind="markdown"), "b.md")
    assert all(len(s.text) <= 64 * MAX_CHARS_PER_TOKEN for s in specs)
    joined = "".join(s.text for s in specs)  # chunks meet at whitespace: nothing lost or repeated
    assert joined.replace(" ", "").replace("\n", "") == f"#Blobbefore{blob}after"
    assert len(specs) > 200_000 // (64 * MAX_CHARS_PER_TOKEN)
    assert all(text[s.start_char:s.end_char] == s.text for s in specs)


def test_blank_line_gap_does_not_make_a_giant_chunk() -> None:
    text = "alpha words here\n" + "\n" * 100_000 + "omega words here\n"
    specs = Chunker(words, 50, 0).chunk(ParsedDoc(text=text, kind="text"), "gap.txt")
    assert all(len(s.text) <= 50 * MAX_CHARS_PER_TOKEN for s in specs)
    assert [s.text for s in specs] == ["alpha words here", "omega words here"]
    assert specs[1].start_line == 100_002


def test_huge_heading_like_lines_are_text() -> None:
    hashes = "# " + "#" * 200_000 + "x"  # made the old ATX pattern backtrack quadratically
    brackets = "## [" + "[" * 200_000  # and the title cleaner
    for line in (hashes, brackets):
        specs = Chunker(words, 64, 0).chunk(ParsedDoc(text=f"# Real\n\n{line}\n\nTail text.\n", kind="markdown"), "h.md")
        assert {s.heading for s in specs} == {"Real"}
        assert "Tail text." in specs[-1].text


def test_closing_hashes_still_leave_atx_titles() -> None:
    specs = Chunker(words, 64, 0).chunk(ParsedDoc(text="# Title ##\n\n## Sub #x ###  \n\nbody\n", kind="markdown"), "t.md")
    assert [s.heading for s in specs] == ["Title > Sub #x"]


def test_many_pdf_pages_with_identical_text_map_to_their_pages() -> None:
    pages = [(i, "Same words on every page. " * 5) for i in range(1, 3001)]
    doc = ParsedDoc(text="\n\n".join(t for _, t in pages), kind="pdf", title="Big", pages=pages)
    count = Counting()
    specs = Chunker(count, 50, 0).chunk(doc, "big.pdf")
    assert [s.page for s in specs] == list(range(1, 3001))
    for s in specs:
        assert doc.text[s.start_char:s.end_char] == s.text
    assert count.chars <= 2 * len(doc.text) + 100 * len(specs)


def test_byte_spans_on_one_long_non_ascii_line() -> None:
    line = " ".join(f"Grüße{i} aus Köln —" for i in range(20_000))
    specs = Chunker(words, 40, 5).chunk(ParsedDoc(text=line, kind="text"), "k.txt")
    raw = line.encode()
    assert len(specs) > 100
    for s in specs:
        assert raw[s.byte_start:s.byte_end].decode() == s.text


def test_stream_bomb_is_measured_without_inflating_it_all() -> None:
    bomb = text_ops("The heron pump runs at 1450 rpm and more words here", repeat=800_000)  # 66 MB decoded
    data = make_content_pdf([bomb])
    assert len(data) < 400_000
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(SkipFile, match="PDF page 1 holds over 2 MB"):
            parse_pdf(data, "bomb.pdf")
        grown_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert grown_mb < 40  # the 66 MB stream was never decoded in full


def test_form_xobject_bomb_counts_toward_the_page() -> None:
    import io
    import zlib

    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    base = PdfReader(io.BytesIO(make_content_pdf([b"q /Fm1 Do Q\n"])))
    w = PdfWriter(clone_from=base)
    page = w.pages[0]
    form = StreamObject()
    form._data = zlib.compress(text_ops("Hidden form text", repeat=100_000), 9)  # 3 MB decoded
    form.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Form"),
                 NameObject("/Filter"): NameObject("/FlateDecode"), NameObject("/Resources"): page["/Resources"]})
    page["/Resources"].get_object()[NameObject("/XObject")] = DictionaryObject({NameObject("/Fm1"): w._add_object(form)})
    buf = io.BytesIO()
    w.write(buf)
    with pytest.raises(SkipFile, match="PDF page 1 holds over 1 MB"):
        parse_pdf(buf.getvalue(), "form.pdf", TextLimits(max_page_bytes=1_000_000))
