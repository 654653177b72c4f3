"""Small real PDFs for the parser and bad-input tests, written with pypdf (one font, one text run per page)."""

from __future__ import annotations

import io


def make_pdf(pages: list[str], password: str | None = None, algorithm: str = "AES-128") -> bytes:
    """A PDF whose page i shows ``pages[i]`` ("" gives a page without text); optionally encrypted."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    for text in pages:
        page = w.add_blank_page(width=400, height=300)
        font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                                 NameObject("/BaseFont"): NameObject("/Helvetica")})
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): w._add_object(font)})})
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 20 250 Td ({text}) Tj ET".encode("latin-1"))
        page[NameObject("/Contents")] = w._add_object(stream)
    if password:
        w.encrypt(user_password=password, owner_password=password, algorithm=algorithm)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def make_content_pdf(contents: list[bytes], compress: bool = True) -> bytes:
    """A PDF whose page i draws the raw content stream ``contents[i]`` (Helvetica as /F1),
    FlateDecode-compressed when ``compress``: a few KB of file can decode to many MB."""
    import zlib

    from pypdf import PdfWriter
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    w = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    font_ref = w._add_object(font)
    for raw in contents:
        page = w.add_blank_page(width=400, height=300)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})})
        stream = StreamObject()
        stream._data = zlib.compress(raw, 9) if compress else raw
        if compress:
            stream[NameObject("/Filter")] = NameObject("/FlateDecode")
        page[NameObject("/Contents")] = w._add_object(stream)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def text_ops(text: str, repeat: int = 1) -> bytes:
    """Content-stream operators that show ``text`` (repeated ``repeat`` times, one run per line)."""
    line = f"BT /F1 12 Tf 20 250 Td ({text}) Tj ET\n".encode("latin-1")
    return line * repeat
