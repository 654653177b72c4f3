"""Document context for chunks (rag.ingest.context): what is added, and that it always fits."""

from __future__ import annotations

from rag.ingest.chunker import ChunkSpec
from rag.ingest.context import add_context, document_lead, embed_text


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word (the real one is tested in the index tests)."""
    return len(text.split())


def spec(text: str, heading: str = "Doc > Part") -> ChunkSpec:
    return ChunkSpec("id", heading, text, 0, len(text), 0, len(text), 1, 2, words(text))


def test_lead_leaves_headings_and_underlines_out() -> None:
    text = "# Kestrel\n\nThe relay forwards sensor data.\n\nSetup\n=====\n\nIt needs power."
    assert document_lead(text) == "The relay forwards sensor data. Setup It needs power."
    assert document_lead("one two three four", words=2) == "one two"


def test_later_chunks_get_the_lead_and_the_first_does_not() -> None:
    first = spec("# T\n\nresnet image classifier pretrained on imagenet")
    later = spec("model = torch.hub.load('pytorch/vision', 'resnet18')", heading="T > Example")
    out = add_context([first, later], title="", count_tokens=words, window=100)
    assert out[0].context == ""
    assert out[1].context == "resnet image classifier pretrained on imagenet"
    assert embed_text(out[1]).startswith(out[1].context + "\nT > Example\nmodel =")
    assert out[1].text.startswith("model =")  # the stored (shown) text is unchanged


def test_title_only_when_the_heading_lacks_it() -> None:
    out = add_context([spec("alpha beta", heading="Guide > Intro")], title="Guide", count_tokens=words, window=50)
    assert out[0].context == ""
    out = add_context([spec("alpha beta", heading="Intro")], title="Guide", count_tokens=words, window=50)
    assert out[0].context == "Guide"


def test_context_never_pushes_text_out_of_the_window() -> None:
    lead = " ".join(f"w{i}" for i in range(60))
    first = spec(lead)
    short = spec("short code chunk", heading="H")
    full = spec(" ".join("x" for _ in range(95)), heading="H")
    out = add_context([first, short, full], title="", count_tokens=words, window=40, lead_words=60)
    assert words(embed_text(out[1])) <= 40 and out[1].context.startswith("w0 w1")
    assert out[1].context == " ".join(f"w{i}" for i in range(40 - 4 - 1))  # room: window - 4 words - newline
    assert out[2].context == ""  # a chunk that fills the window gets no context
