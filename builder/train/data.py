"""Training rows -> token ids and labels with the loss on assistant tokens only.

Rows are the training rows of docs/architecture.md (``{"messages": [...], "meta": {...}}``). A row is
rendered to text with the model's own chat template (or the Harmony renderer for gpt-oss),
and the assistant spans are found *by rendering prefixes*: the text up to a turn with the
generation prompt, and the text through that turn. Whatever the template adds between the two
(the answer, its end-of-turn token) is what the model must learn to produce; everything else
(system prompt, documents, question, role headers) gets label -100. This works for any chat
format whose rendering is prefix-stable; for templates that are not (e.g. a system prompt that
moves to the last user turn), the assistant contents are located in the full text instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.families import ChatFormat
from rag.errors import TrainingError
from rag.fsutil import sha256_file

IGNORE = -100
Messages = list[dict[str, Any]]
Renderer = Callable[[Sequence[dict[str, Any]], bool], str]


@dataclass
class Dataset:
    path: Path
    rows: list[dict[str, Any]]
    sha256: str


@dataclass
class Encoded:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    dropped_too_long: int = 0
    tokens: int = 0
    assistant_tokens: int = 0


def load_rows(path: str | Path) -> Dataset:
    """Read a JSONL file of training rows, checking each row's shape with a line number."""
    p = Path(path)
    if not p.is_file():
        raise TrainingError(
            f"Training data {p} does not exist. Run 'raftsmith generate' first, or pass "
            "--train-file PATH to a JSONL file of {\"messages\": [...]} rows."
        )
    rows: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TrainingError(f"{p}:{n} is not valid JSON ({err.msg}); fix or delete that line.") from None
            _check_row(row, p, n)
            rows.append(row)
    if not rows:
        raise TrainingError(f"{p} holds no rows; generate training data first ('raftsmith generate').")
    return Dataset(p, rows, sha256_file(p))


def _check_row(row: Any, path: Path, n: int) -> None:
    msgs = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise TrainingError(f"{path}:{n}: each row needs a non-empty \"messages\" list.")
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer") \
                or not isinstance(m.get("content"), str):
            raise TrainingError(
                f"{path}:{n}: every message needs \"role\" (system/user/assistant) and string \"content\"."
            )
    if not any(m["role"] == "assistant" for m in msgs):
        raise TrainingError(f"{path}:{n}: the row has no assistant message, so nothing to learn.")


def prepare_messages(messages: Sequence[dict[str, Any]], fmt: ChatFormat) -> Messages:
    """Adapt a row to the chat format: formats without a system role get it folded into the
    first user turn ("system\\n\\nuser"), as Ollama's templates for them do."""
    msgs = [dict(m) for m in messages]
    if not fmt.system_role and msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        for m in msgs:
            if m["role"] == "user":
                m["content"] = f"{system}\n\n{m['content']}"
                break
    return msgs


def make_renderer(fmt: ChatFormat, tokenizer: Any | None) -> Renderer:
    """``render(messages, add_generation_prompt) -> str`` for the format."""
    if fmt.renderer == "harmony":
        from builder.train import harmony

        return lambda msgs, gen: harmony.render(msgs, add_generation_prompt=gen)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            "The base model's tokenizer has no chat template; use an instruct/chat base model "
            "(the family's default) or set student.base to one that ships a chat template."
        )

    def render(msgs: Sequence[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    return render


def assistant_spans(messages: Sequence[dict[str, Any]], render: Renderer, fmt: ChatFormat,
                    eos: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character spans the model is trained to write."""
    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    stable = True
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        # Some templates close a conversation that ends on an assistant turn with an extra
        # EOS (phi-3: "<|end|>\n" + eos); inside a longer conversation that EOS is absent.
        if eos and not full.startswith(through) and through.endswith(eos):
            through = through[: -len(eos)]
        end = len(through)
        if not (through.startswith(before) and full.startswith(through) and end > len(before)):
            stable = False
            break
        spans.append((len(before), end))
    if stable:
        return full, spans
    return full, _spans_by_search(full, messages, fmt)


def _spans_by_search(full: str, messages: Sequence[dict[str, Any]], fmt: ChatFormat) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in messages:
        if m["role"] != "assistant":
            if m["content"]:
                found = full.find(m["content"], pos)
                pos = found + len(m["content"]) if found >= 0 else pos
            continue
        content = m["content"].strip()
        start = full.find(content, pos)
        if start < 0:
            raise TrainingError(
                "Could not find an assistant message in the rendered chat template; the template "
                "rewrites message text. Use the family's default base model."
            )
        end = start + len(content)
        rest = full[end:]
        for stop in fmt.stop:
            stripped = rest.lstrip(" ")
            if stripped.startswith(stop):
                end += len(rest) - len(stripped) + len(stop)
                break
        spans.append((start, end))
        pos = end
    return spans


def encode_row(messages: Sequence[dict[str, Any]], tokenizer: Any, fmt: ChatFormat,
               render: Renderer | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside assistant spans) for one conversation."""
    if not getattr(tokenizer, "is_fast", False):
        raise TrainingError(
            "The base model's tokenizer is not a fast (Rust) tokenizer, so token offsets for the "
            "assistant-only loss are unavailable. Use a base model that ships tokenizer.json."
        )
    render = render or make_renderer(fmt, tokenizer)
    msgs = prepare_messages(messages, fmt)
    text, spans = assistant_spans(msgs, render, fmt, getattr(tokenizer, "eos_token", None))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for k, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        if any(a <= s < b for a, b in spans):
            labels[k] = ids[k]
    return ids, labels


def encode_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, fmt: ChatFormat, max_seq_len: int) -> Encoded:
    render = make_renderer(fmt, tokenizer)
    out = Encoded()
    for row in rows:
        ids, labels = encode_row(row["messages"], tokenizer, fmt, render)
        if len(ids) > max_seq_len:
            # Truncating would cut off the answer (it comes last); drop the row and count it.
            out.dropped_too_long += 1
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.tokens += len(ids)
        out.assistant_tokens += sum(1 for x in labels if x != IGNORE)
    if rows and not out.input_ids:
        raise TrainingError(
            f"All {len(rows)} rows are longer than student.max_seq_len={max_seq_len} tokens. "
            "Raise student.max_seq_len or generate rows with fewer/shorter context chunks."
        )
    return out


class TokenDataset:
    """A torch-style map dataset over encoded rows (no datasets/Arrow round trip needed)."""

    def __init__(self, enc: Encoded):
        self.enc = enc

    def __len__(self) -> int:
        return len(self.enc.input_ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.enc.input_ids[i], "labels": self.enc.labels[i]}


def collate(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """Right-pad a batch; padded positions get attention 0 and label -100."""

    def _collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.tensor(b["labels"], dtype=torch.long)
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return _collate
