"""A real GGUF (the packaged SmolLM2) given a malicious chat template: rendering and chatting
through the llama.cpp backend give a clear IntegrityError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rag.errors import IntegrityError

pytestmark = pytest.mark.integration


def test_malicious_gguf_template_is_refused_clearly(smollm2_gguf: Path, tmp_path: Path) -> None:
    from rag.llm.llama_cpp_backend import LlamaCppBackend, clear_cache

    evil = tmp_path / "evil.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--chat-template",
                    "{{ ''.__class__.__mro__[1].__subclasses__() }}", str(smollm2_gguf), str(evil)],
                   check=True, capture_output=True)
    backend = LlamaCppBackend(evil, n_ctx=512)
    try:
        messages = [{"role": "user", "content": "hello"}]
        with pytest.raises(IntegrityError, match="evil.gguf"):
            backend.render_prompt(messages)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match="sandbox forbids"):
            backend.chat(messages, max_tokens=4)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError, match="sandbox forbids"):
            list(backend.chat(messages, max_tokens=4, stream=True))  # type: ignore[arg-type, call-overload]
    finally:
        clear_cache()
