"""Answer logic without models: relevance threshold, token budgeting, citation mapping, resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rag.answer import fit_to_budget, map_citations, split_relevant
from rag.config import init_workspace
from rag.errors import ConfigError
from rag.prompting import build_messages
from rag.types import Chunk


def _chunk(i: int, text: str | None = None, dense: float | None = 0.5, start: int = 1) -> Chunk:
    text = text or f"chunk number {i} " + "word " * 40
    meta = {"dense_score": dense} if dense is not None else {}
    return Chunk(chunk_id=f"id{i}", source=f"docs/f{i}.md", heading=f"H{i}", start_line=start,
                 end_line=start + text.count("\n"), text=text, score=1.0 / (i + 1), meta=meta)


def _words(msgs: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) + 4 for m in msgs)


def test_threshold_splits_by_dense_cosine() -> None:
    chunks = [_chunk(0, dense=0.8), _chunk(1, dense=0.1), _chunk(2, dense=None), _chunk(3, dense=0.25)]
    kept, below = split_relevant(chunks, 0.25)
    assert [c.chunk_id for c in kept] == ["id0", "id2", "id3"]
    assert [c.chunk_id for c in below] == ["id1"]
    kept, below = split_relevant([_chunk(0, dense=0.1), _chunk(1, dense=0.2)], 0.25)
    assert kept == [] and len(below) == 2


def test_dense_mode_uses_score_as_cosine() -> None:
    c = _chunk(0, dense=None)
    c.meta["mode"] = "dense"
    c.score = 0.1
    assert split_relevant([c], 0.25)[0] == []


def test_budget_keeps_everything_when_it_fits() -> None:
    chunks = [_chunk(i) for i in range(4)]
    msgs, kept, dropped, turns = fit_to_budget("q?", chunks, [], _words, 10_000)
    assert kept == chunks and dropped == 0 and turns == 0
    assert msgs == build_messages("q?", chunks, [])


def test_budget_drops_lowest_ranked_chunks_first() -> None:
    chunks = [_chunk(i) for i in range(5)]
    full = _words(build_messages("q?", chunks, []))
    per_chunk = full - _words(build_messages("q?", chunks[:4], []))
    msgs, kept, dropped, _ = fit_to_budget("q?", chunks, [], _words, full - per_chunk)
    assert [c.chunk_id for c in kept] == ["id0", "id1", "id2", "id3"] and dropped == 1
    msgs, kept, dropped, _ = fit_to_budget("q?", chunks, [], _words, full - 2 * per_chunk - 1)
    assert [c.chunk_id for c in kept] == ["id0", "id1"] and dropped == 3
    assert _words(msgs) <= full - 2 * per_chunk - 1
    # whole chunks only: every kept chunk's text is in the prompt untruncated
    for c in kept:
        assert c.text.strip() in msgs[-1]["content"]


def test_budget_drops_oldest_history_before_chunks() -> None:
    chunks = [_chunk(i) for i in range(2)]
    history = [{"role": "user", "content": "old " * 50}, {"role": "assistant", "content": "older " * 50},
               {"role": "user", "content": "recent"}, {"role": "assistant", "content": "reply"}]
    need = _words(build_messages("q?", chunks, history[2:]))
    msgs, kept, dropped, turns = fit_to_budget("q?", chunks, history, _words, need)
    assert turns == 2 and dropped == 0 and msgs[1]["content"] == "recent"


def test_budget_refuses_when_best_chunk_cannot_fit() -> None:
    with pytest.raises(ConfigError, match="num_ctx"):
        fit_to_budget("q?", [_chunk(0)], [], _words, 10)
    with pytest.raises(ConfigError, match="question alone"):
        fit_to_budget("q " * 100, [], [], _words, 10)


def test_numbered_citations_map_to_prompt_positions() -> None:
    chunks = [_chunk(i) for i in range(3)]
    cites = map_citations("See [2] and also [3, 1]. [9] is out of range. <ANSWER>: x", chunks)
    assert [c.chunk_id for c in cites] == ["id1", "id2", "id0"]
    assert [c.meta["citation"] for c in cites] == [2, 3, 1]
    assert all(c.meta["cited_by"] == "number" for c in cites)


def test_quote_fallback_and_line_span() -> None:
    text = "# Ports\nThe relay listens on TCP port 7431\nfor sensor ingest.\nOther line."
    chunks = [_chunk(0), _chunk(1, text=text, start=10)]
    raw = "##begin_quote## The relay listens on TCP port 7431 for sensor ingest. ##end_quote##\n<ANSWER>: 7431"
    cites = map_citations(raw, chunks)
    assert len(cites) == 1 and cites[0].chunk_id == "id1"
    assert cites[0].meta["cited_by"] == "quote" and cites[0].meta["citation"] == 2
    assert cites[0].meta["quote_lines"] == [11, 12]
    # the original chunks are not modified
    assert "citation" not in chunks[1].meta


def test_no_citation_invented() -> None:
    chunks = [_chunk(0)]
    assert map_citations("I think it is 42. <ANSWER>: 42", chunks) == []
    assert map_citations("##begin_quote## text from nowhere at all ##end_quote##", chunks) == []
    assert map_citations("<ANSWER>: 7431", chunks) == []  # no chunk holds the answer
    assert map_citations("<ANSWER>: 0", [_chunk(0, text="port 0 here")]) == []  # too short to be evidence
    assert map_citations("<ANSWER>: 7431", [_chunk(0, text="port 74310 here")]) == []  # whole words only


def test_answer_fallback_cites_best_ranked_chunk_holding_the_answer() -> None:
    text = "# Ports\nThe relay listens on TCP port 7431\nfor sensor ingest."
    chunks = [_chunk(0), _chunk(1, text=text, start=20), _chunk(2, text="also 7431 here")]
    cites = map_citations("The relay uses port 7431.\n<ANSWER>: 7431", chunks)
    assert [c.chunk_id for c in cites] == ["id1"]
    assert cites[0].meta["cited_by"] == "answer" and cites[0].meta["citation"] == 2 and cites[0].meta["quote_lines"] == [21, 21]
    # an explicit [n] wins over the fallback
    assert [c.chunk_id for c in map_citations("See [3].\n<ANSWER>: 7431", chunks)] == ["id2"]


# --- model resolution ------------------------------------------------------------------------

def _export(ws_root: Path, name: str, created: str, files: list[tuple[str, str]]) -> Path:
    d = ws_root / "gguf" / name
    d.mkdir(parents=True)
    entries = []
    for fname, role in files:
        (d / fname).write_bytes(f"{name}-{fname}".encode())
        entries.append({"path": fname, "role": role, "quantization": "q4_k_m" if fname.endswith(".gguf") else None,
                        "sha256": "ab" * 32, "size": 10})
    manifest = {"format": "raftsmith-export/1", "name": name, "family": "smollm2", "chat_format": "chatml",
                "created_at": created, "base_model": {"id": "x", "sha256": "cd" * 32}, "stop": ["<|im_end|>"],
                "system_prompt": "s", "files": entries}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_resolve_tuned_base_and_adapter(tmp_path: Path) -> None:
    from rag.llm.resolve import resolve_model

    ws = init_workspace(tmp_path / "ws", corpus_name="k")
    with pytest.raises(ConfigError, match="raftsmith export"):
        resolve_model(ws, "tuned", "llama-cpp")
    _export(ws.root, "old", "2026-01-01T00:00:00+00:00", [("model-q4_k_m.gguf", "merged")])
    new = _export(ws.root, "new", "2026-02-01T00:00:00+00:00",
                  [("model-q4_k_m.gguf", "merged"), ("base-q4_k_m.gguf", "base"), ("adapter.gguf", "adapter")])
    tuned = resolve_model(ws, "tuned", "llama-cpp")
    assert tuned.path == new / "model-q4_k_m.gguf" and tuned.stop == ["<|im_end|>"]
    assert tuned.digest == "sha256:" + "ab" * 32
    base = resolve_model(ws, "base", "llama-cpp")
    assert base.path == new / "base-q4_k_m.gguf"
    ad = resolve_model(ws, "tuned-adapter", "llama-cpp")
    assert ad.path == new / "base-q4_k_m.gguf" and ad.adapter_path == new / "adapter.gguf"
    assert resolve_model(ws, "old", "llama-cpp").path == ws.root / "gguf" / "old" / "model-q4_k_m.gguf"
    # ollama names: what register gives the newest export, unless configured
    assert resolve_model(ws, "tuned", "ollama").remote_name == "new"
    assert resolve_model(ws, "base", "ollama").remote_name == "new-base"
    ws.config.ollama.base_model_name = "smollm2:135m"
    assert resolve_model(ws, "base", "ollama").remote_name == "smollm2:135m"
    with pytest.raises(ConfigError, match="Unknown model"):
        resolve_model(ws, "nope", "llama-cpp")


def test_resolve_base_falls_back_to_packaged_or_config(tmp_path: Path, smollm2_gguf: Path) -> None:
    from rag.llm.resolve import resolve_model

    ws = init_workspace(tmp_path / "ws", corpus_name="k")
    assert resolve_model(ws, "base", "llama-cpp").path == smollm2_gguf
    copy = tmp_path / "mine.gguf"
    shutil.copy(smollm2_gguf, copy)
    ws.config.chat.base_gguf = str(copy)
    assert resolve_model(ws, "base", "llama-cpp").path == copy
    ws.config.chat.base_gguf = str(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="chat.base_gguf"):
        resolve_model(ws, "base", "llama-cpp")
    ws.config.chat.base_gguf = None
    ws.config.student.family = "llama3"
    with pytest.raises(ConfigError, match="chat.base_gguf"):
        resolve_model(ws, "base", "llama-cpp")
