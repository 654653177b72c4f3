"""Ollama Modelfiles for an export: the merged model and the base + adapter variant.

The TEMPLATE comes from ``modelfiles/<format>.tmpl`` (tested byte-for-byte against Ollama's
own expected renderings and against the prompt the trainer used), the stop strings from the
registry, the SYSTEM prompt from ``rag.prompting`` (what the model was trained with), and
``num_ctx`` from ``chat.num_ctx``: Ollama's default context (2048-4096 depending on version)
silently truncates long RAG prompts from the front, which drops the system prompt and the
first documents, so it is always written explicitly.
"""

from __future__ import annotations

from pathlib import Path

from builder.families import ChatFormat
from rag.errors import ExportError

MIN_NUM_CTX = 4096


def templates_dir() -> Path:
    """modelfiles/ at the repository root (also shipped as package data beside builder/)."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "modelfiles", here.parents[1] / "modelfiles"):
        if cand.is_dir():
            return cand
    raise ExportError("The modelfiles/ templates folder is missing from this install; reinstall raftsmith.")


def load_template(fmt: ChatFormat) -> str | None:
    """The TEMPLATE body for ``fmt``, or None where Ollama renders the format itself (Harmony)."""
    if not fmt.modelfile_template.endswith(".tmpl"):
        return None
    path = templates_dir() / fmt.modelfile_template
    if not path.is_file():
        raise ExportError(f"Modelfile template {path} is missing; reinstall raftsmith.")
    return path.read_text(encoding="utf-8")


def _quote(text: str, what: str) -> str:
    if '"""' in text:
        raise ExportError(f"The {what} contains '\"\"\"', which a Modelfile cannot hold; edit it.")
    return f'"""{text}"""'


def render_modelfile(
    fmt: ChatFormat,
    from_: str,
    system: str,
    num_ctx: int,
    temperature: float = 0.0,
    adapter: str | None = None,
    stop: tuple[str, ...] | None = None,
) -> str:
    lines = [f"FROM {from_}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    template = load_template(fmt)
    if template is not None:
        lines.append(f"TEMPLATE {_quote(template, 'template')}")
    lines.append(f"SYSTEM {_quote(system, 'system prompt')}")
    for s in stop if stop is not None else fmt.stop:
        lines.append(f'PARAMETER stop "{s}"')
    lines.append(f"PARAMETER temperature {temperature:g}")
    lines.append(f"PARAMETER num_ctx {max(num_ctx, MIN_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def _chatml(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _phi3(role: str, content: str) -> str:
    return f"<|{role}|>\n{content}<|end|>\n"


def _llama3(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"


# What each modelfiles/<format>.tmpl renders for a conversation ending on a user turn, in
# Python (proven equal to Go's rendering in tests/integration/builder/export/test_modelfile_templates.py).
_TURN = {"chatml": (_chatml, "<|im_start|>assistant\n"), "phi-3": (_phi3, "<|assistant|>\n"),
         "llama3-instruct": (_llama3, "<|start_header_id|>assistant<|end_header_id|>\n\n")}


def ollama_prompt(fmt: ChatFormat, messages: list[dict[str, str]]) -> str | None:
    """The prompt Ollama builds from our TEMPLATE (None for formats Ollama renders itself)."""
    if fmt.name in _TURN:
        turn, gen = _TURN[fmt.name]
        return "".join(turn(m["role"], m["content"]) for m in messages) + gen
    if fmt.name == "mistral-instruct":
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        out, first = [], True
        for m in messages:
            if m["role"] == "user":
                prefix = f"{system}\n\n" if first and system else ""
                out.append(f"[INST] {prefix}{m['content']}[/INST]")
                first = False
            elif m["role"] == "assistant":
                out.append(f" {m['content']}</s>")
        return "".join(out)
    return None


def template_agreement(fmt: ChatFormat, tokenizer: object) -> dict[str, object]:
    """Does the trainer's prompt (the base model's own chat template) equal what the Modelfile
    makes Ollama send? A mismatch means the Ollama model sees a prompt layout it was not
    trained on (the classic "gibberish / never stops" after import)."""
    from builder.train.data import make_renderer, prepare_messages

    probe = [{"role": "system", "content": "SYSTEM TEXT"}, {"role": "user", "content": "FIRST QUESTION"},
             {"role": "assistant", "content": "FIRST ANSWER"}, {"role": "user", "content": "SECOND QUESTION"}]
    expected = ollama_prompt(fmt, probe)
    if expected is None:
        return {"checked": False, "reason": f"Ollama renders {fmt.name} itself"}
    render = make_renderer(fmt, tokenizer)
    got = render(prepare_messages(probe, fmt), True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and got.startswith(bos) and not expected.startswith(bos):
        got = got[len(bos):]  # llama.cpp adds BOS itself
    return {"checked": True, "match": got == expected, "trainer_prompt": got, "modelfile_prompt": expected}
