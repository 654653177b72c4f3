"""Parsers: encodings, binary detection, HTML main text, PDF pages and failures, size limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pdf_builder import make_pdf

from rag.errors import IngestError
from rag.ingest.parsers import SkipFile, decode_text, kind_for, parse_bytes, parse_html, read_file


def test_kinds() -> None:
    assert kind_for("a/b.MD") == "markdown"
    assert kind_for("x.mdx") == "markdown"
    assert kind_for("x.rst") == "rst"
    assert kind_for("x.htm") == "html"
    assert kind_for("https://h/docs/page.md?x=1") == "markdown"
    assert kind_for("https://h/docs/page", "text/plain; charset=utf-8") == "text"
    assert kind_for("photo.png") is None


def test_encodings() -> None:
    text = "Grüße, Ωmega: 42 °C\n"
    assert decode_text(text.encode("utf-8")) == (text, "utf-8")
    assert decode_text(b"\xef\xbb\xbf" + text.encode("utf-8")) == (text, "utf-8-sig")
    assert decode_text(text.encode("utf-16")) == (text, "utf-16")  # with BOM
    assert decode_text("Grüße 42 °C\n".encode("latin-1")) == ("Grüße 42 °C\n", "latin-1")


def test_binary_detected() -> None:
    with pytest.raises(SkipFile, match="binary"):
        decode_text(bytes(range(256)) * 10)
    with pytest.raises(SkipFile, match="binary"):
        decode_text(b"PK\x03\x04\x14\x00\x00\x00")


def test_empty_is_skipped() -> None:
    with pytest.raises(SkipFile, match="empty"):
        parse_bytes(b"", "markdown")
    with pytest.raises(SkipFile, match="empty"):
        parse_bytes(b"  \n\n ", "text")


def test_crlf_normalized() -> None:
    assert parse_bytes(b"# A\r\n\r\nb\r\n", "markdown").text == "# A\n\nb\n"


def test_html_main_text_only() -> None:
    html = """<html><head><title>Relay Manual</title><style>.x{color:red}</style>
    <script>var secret = 1;</script></head><body>
    <header>Site header</header><nav><a href="/">Home</a> Menu</nav>
    <main><h1>Relay</h1><p>The relay listens on <b>port 7431</b>.</p>
    <h2>Commands</h2><pre>kxctl restart\nkxctl status</pre>
    <ul><li>first</li><li>second</li></ul>
    <table><tr><th>Code</th><th>Meaning</th></tr><tr><td>E-202</td><td>buffer full</td></tr></table>
    </main><footer>Copyright</footer></body></html>"""
    doc = parse_html(html)
    assert doc.kind == "markdown" and doc.title == "Relay Manual"
    t = doc.text
    for gone in ("secret", "color:red", "Site header", "Menu", "Copyright"):
        assert gone not in t
    assert "# Relay" in t and "## Commands" in t
    assert "The relay listens on port 7431." in t
    assert "```\nkxctl restart\nkxctl status\n```" in t
    assert "- first\n- second" in t
    assert "| E-202 | buffer full |" in t


def test_html_without_main_uses_body_and_title() -> None:
    doc = parse_html("<html><head><title>T</title></head><body><p>Just text.</p></body></html>")
    assert doc.text.startswith("# T\n\nJust text.")


def test_pdf_pages_kept() -> None:
    doc = parse_bytes(make_pdf(["Port 7431 is used", "", "Fan module OV-FAN-27"]), "pdf", "m.pdf")
    assert doc.kind == "pdf"
    assert [p for p, _ in doc.pages] == [1, 3]  # the blank page 2 carries no text
    assert "7431" in doc.pages[0][1] and "OV-FAN-27" in doc.pages[1][1]


def test_pdf_encrypted_and_truncated() -> None:
    with pytest.raises(IngestError, match="encrypted"):
        parse_bytes(make_pdf(["secret text"], password="hunter2", algorithm="RC4-128"), "pdf")
    data = make_pdf(["Some text here"])
    with pytest.raises((IngestError, SkipFile)):
        parse_bytes(data[: len(data) // 3], "pdf")
    with pytest.raises(IngestError):
        parse_bytes(b"%PDF-1.7\n garbage garbage", "pdf")


def test_read_file_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.md"
    big.write_text("word " * 1000)
    with pytest.raises(SkipFile, match="max_file_mb"):
        read_file(big, max_bytes=100)
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG")
    with pytest.raises(SkipFile, match="unsupported"):
        read_file(img, max_bytes=10**6)
    ok = tmp_path / "ok.txt"
    ok.write_text("hello there\n")
    assert read_file(ok, 10**6)[1].text == "hello there\n"
