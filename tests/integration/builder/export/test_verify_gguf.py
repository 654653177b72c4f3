"""Export verification on real GGUFs: a good model passes; a reply that runs out, or a file
llama.cpp cannot load, fails with a message."""

from __future__ import annotations

import pytest

from builder.export.verify import verify_gguf
from rag.errors import ExportError

pytestmark = pytest.mark.integration


def test_packaged_smollm2_passes_and_a_truncated_reply_fails(smollm2_gguf):
    ok = verify_gguf(smollm2_gguf, expect_arch="llama")
    assert ok.ok, ok
    assert ok.architecture == "llama" and ok.chat_template and ok.finish_reason == "stop" and ok.text
    cut = verify_gguf(smollm2_gguf, max_tokens=2)
    assert not cut.ok and "did not stop" in (cut.problem or "")
    wrong = verify_gguf(smollm2_gguf, expect_arch="qwen2")
    assert not wrong.ok and "architecture" in (wrong.problem or "")


def test_unloadable_file_is_an_export_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ExportError, match="could not load broken.gguf"):
        verify_gguf(bad)
