"""Load every exported GGUF with llama-cpp-python and prove it works before it ships.

For each model (and the base + adapter pair): the architecture is read from the metadata, the
chat template is embedded (llama.cpp and Ollama build the prompt from it), and a fixed prompt
through that template produces non-empty text that ends on the model's own end-of-turn token
before ``max_tokens`` (a template/EOS mismatch shows up as a reply that never stops).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rag.errors import ExportError
from rag.prompting import build_messages

# The probe speaks to the model the way raftsmith (and the Modelfile's SYSTEM) will: with the
# system prompt it was trained under. A small model tuned hard on one domain may ramble under a
# foreign system prompt; that is not the template/EOS failure this check exists to catch.
PROBE = build_messages("What is the capital of France?", None)
MAX_TOKENS = 96


@dataclass
class Verification:
    path: str
    adapter: str | None
    architecture: str | None
    chat_template: bool
    text: str
    finish_reason: str | None
    tokens: int
    seconds: float
    ok: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 from C; keep the console readable (RAFTSMITH_DEBUG=1 shows it)."""
    if os.environ.get("RAFTSMITH_DEBUG", "") not in ("", "0"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def load_llama(path: Path, lora: Path | None = None, n_ctx: int = 1024) -> Any:
    from llama_cpp import Llama

    # RAFTSMITH_THREADS (as for training): on an oversubscribed CPU fewer threads run faster.
    threads = int(os.environ.get("RAFTSMITH_THREADS", "0") or 0) or max(1, min(4, os.cpu_count() or 1))
    kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": n_ctx, "verbose": False, "seed": 0,
                              "n_threads": threads, "n_threads_batch": threads}
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    try:
        with quiet_stderr():
            return Llama(**kwargs)
    except Exception as err:  # noqa: BLE001 - llama.cpp reports load failures as ValueError/RuntimeError
        what = f"{path.name} + {lora.name}" if lora else path.name
        raise ExportError(f"llama.cpp could not load {what}: {err}. The conversion is broken; rerun "
                          "'raftsmith export' and report the converter version in the manifest.") from None


def verify_gguf(path: Path, lora: Path | None = None, expect_arch: str | None = None,
                max_tokens: int = MAX_TOKENS) -> Verification:
    llm = load_llama(path, lora)
    meta = dict(getattr(llm, "metadata", {}) or {})
    arch = meta.get("general.architecture")
    has_template = bool(meta.get("tokenizer.chat_template"))
    t0 = time.time()
    with quiet_stderr():
        out = llm.create_chat_completion(messages=PROBE, max_tokens=max_tokens, temperature=0.0, seed=0)
    choice = out["choices"][0]
    text = (choice["message"].get("content") or "").strip()
    finish = choice.get("finish_reason")
    problems = []
    if expect_arch and arch != expect_arch:
        problems.append(f"architecture {arch!r}, expected {expect_arch!r}")
    if not has_template:
        problems.append("no tokenizer.chat_template in the GGUF")
    if not text:
        problems.append("empty reply")
    if finish != "stop":
        problems.append(f"reply did not stop within {max_tokens} tokens (finish_reason={finish!r})")
    with contextlib.suppress(Exception):
        llm.close()
    return Verification(
        path=path.name, adapter=lora.name if lora else None, architecture=arch, chat_template=has_template,
        text=text[:300], finish_reason=finish, tokens=int(out.get("usage", {}).get("completion_tokens", 0)),
        seconds=round(time.time() - t0, 2), ok=not problems, problem="; ".join(problems) or None,
    )
