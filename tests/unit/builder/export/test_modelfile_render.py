"""Generated Modelfiles: FROM/ADAPTER, TEMPLATE per format, stop strings, num_ctx floor."""

from __future__ import annotations

import pytest

from builder.export.modelfile import MIN_NUM_CTX, render_modelfile, templates_dir
from builder.families import CHAT_FORMATS, FAMILIES, chat_format
from rag.errors import ExportError
from rag.prompting import SYSTEM_PROMPT


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_modelfile_per_family(family):
    fam = FAMILIES[family]
    fmt = chat_format(fam)
    merged = render_modelfile(fmt, "./model-q4_k_m.gguf", SYSTEM_PROMPT, num_ctx=8192)
    adapter = render_modelfile(fmt, fam.ollama_base, SYSTEM_PROMPT, num_ctx=8192, adapter="./adapter.gguf")
    assert merged.startswith("FROM ./model-q4_k_m.gguf\n")
    assert adapter.startswith(f"FROM {fam.ollama_base}\nADAPTER ./adapter.gguf\n")
    for text in (merged, adapter):
        assert f'SYSTEM """{SYSTEM_PROMPT}"""' in text
        assert [ln.split(" ", 2)[2] for ln in text.splitlines() if ln.startswith("PARAMETER stop")] == \
            [f'"{s}"' for s in fmt.stop]
        assert "PARAMETER num_ctx 8192" in text and "PARAMETER temperature 0" in text
        if fmt.renderer == "harmony":
            assert "TEMPLATE" not in text  # Ollama renders and parses Harmony itself
        else:
            tmpl = (templates_dir() / fmt.modelfile_template).read_text()
            assert f'TEMPLATE """{tmpl}"""' in text


def test_num_ctx_never_below_rag_floor():
    text = render_modelfile(CHAT_FORMATS["chatml"], "./m.gguf", "sys", num_ctx=1024)
    assert f"PARAMETER num_ctx {MIN_NUM_CTX}" in text


def test_triple_quotes_in_system_prompt_are_refused():
    with pytest.raises(ExportError, match='"""'):
        render_modelfile(CHAT_FORMATS["chatml"], "./m.gguf", 'say """hi"""', num_ctx=4096)
