"""RAFT rows -> training pairs and eval queries, without models: which rows train, which never do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.retriever.pairs import chunk_embed_text, load_pairs
from builder.retriever.switch import set_embedding_model
from rag.config import init_workspace, load_workspace
from rag.errors import ConfigError, TrainingError
from rag.ingest.chunker import ChunkSpec
from rag.ingest.pipeline import embed_text
from rag.types import Chunk


def _chunk(i: int, source: str) -> Chunk:
    return Chunk(chunk_id=f"c{i}", source=source, heading=f"Doc {i} > Part", start_line=1, end_line=3,
                 text=f"Chunk {i} says the relay uses port {7000 + i}.")


CHUNKS = [_chunk(0, "docs/a.md"), _chunk(1, "docs/a.md"), _chunk(2, "docs/b.md"), _chunk(3, "docs/c.md"),
          _chunk(4, "docs/d.md")]


def _row(id_: str, question: str, split: str = "train", oracle: list[str] | None = None,
         distractors: list[str] | None = None, **meta: Any) -> str:
    m = {"id": id_, "question": question, "answer": "x", "split": split,
         "oracle_chunk_ids": ["c0"] if oracle is None else oracle,
         "distractor_chunk_ids": ["c1", "c2", "c3"] if distractors is None else distractors, **meta}
    return json.dumps({"messages": [], "meta": m})


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    w = init_workspace(tmp_path / "ws", corpus_name="t")
    (w.root / "domain_questions" / "t-heldout.yaml").write_text(yaml.safe_dump(
        {"holdout": True, "questions": [{"category": "c", "items": [{"id": "h1", "question": "Held out: which port?",
                                                                      "answer": "7000"}]}]}))
    return load_workspace(w.config_path)


def _write(ws: Any, train: list[str], evals: list[str] | None = None) -> None:
    (ws.training_dir / "t.train.jsonl").write_text("\n".join(train) + "\n")
    if evals is not None:
        (ws.training_dir / "t.eval.jsonl").write_text("\n".join(evals) + "\n")


def test_pairs_skip_eval_held_out_closed_book_and_refusals(ws: Any) -> None:
    _write(ws, [
        _row("q1", "Which port does the relay use?"),
        _row("q1#closed", "Which port does the relay use?", closed_book=True, distractors=[]),
        _row("r1", "What colour is the relay?", oracle=[], refusal=True),
        _row("h1-old", "held out: which port"),  # same phrasing as the held-out file, from an older run
        _row("e1-leak", "What port is used by the relay", split="train"),  # an eval phrasing in train rows
        _row("q2", "Where is port 7002 documented?", oracle=["c2"], distractors=["c3"]),
    ], [_row("e1", "What port is used by the relay?", split="eval")])
    got = load_pairs(ws, CHUNKS, hard_negatives=1)
    assert [p.question_id for p in got.pairs] == ["q1", "q2"]
    assert got.skipped == {"held_out_or_eval": 2}
    assert [(q.question_id, q.oracle_chunk_ids) for q in got.eval_queries] == [("e1", ["c0"])]
    # the positive is what the index embeds; a distractor from the oracle's own document is no negative
    assert got.pairs[0].positive == chunk_embed_text(CHUNKS[0])
    assert got.pairs[0].negatives == [chunk_embed_text(CHUNKS[2])]


def test_the_embedded_text_is_the_pipelines(ws: Any) -> None:
    c = CHUNKS[3]
    spec = ChunkSpec(chunk_id=c.chunk_id, heading=c.heading, text=c.text, start_char=0, end_char=len(c.text),
                     byte_start=0, byte_end=1, start_line=1, end_line=3, n_tokens=9, context="Doc 3: relay ports.")
    assert chunk_embed_text(c, "Doc 3: relay ports.") == embed_text(spec)
    assert "Doc 3: relay ports." in embed_text(spec) and c.heading in chunk_embed_text(c)
    _write(ws, [_row("q1", "Which port?", oracle=["c3"], distractors=["c4"])])
    got = load_pairs(ws, CHUNKS, contexts={"c3": "Doc 3: relay ports.", "c4": "Doc 4 lead."})
    assert got.pairs[0].positive == embed_text(spec)  # the stored context goes with the chunk
    assert got.pairs[0].negatives[0].startswith("Doc 4 lead.")


def test_missing_negatives_are_filled_from_other_documents(ws: Any) -> None:
    _write(ws, [_row("q1", "Which port?", distractors=[])])
    got = load_pairs(ws, CHUNKS, hard_negatives=2, seed=3)
    negs = got.pairs[0].negatives
    assert len(negs) == 2 and len(set(negs)) == 2
    assert not {chunk_embed_text(CHUNKS[0]), chunk_embed_text(CHUNKS[1])} & set(negs)  # never the oracle's document
    assert load_pairs(ws, CHUNKS, hard_negatives=2, seed=3).pairs[0].negatives == negs  # seeded


@pytest.mark.parametrize("rows", [[], [_row("r1", "What colour?", oracle=[], refusal=True)],
                                  [_row("e1", "Which port?", split="eval")], [_row("q1", "Which port?", oracle=["gone"])]])
def test_no_pairs_is_a_clear_error(ws: Any, rows: list[str]) -> None:
    _write(ws, rows)
    with pytest.raises(TrainingError, match="No training pairs.*raftsmith generate"):
        load_pairs(ws, CHUNKS)


def test_missing_files_name_the_fix(ws: Any) -> None:
    with pytest.raises(TrainingError, match="does not exist. Run 'raftsmith generate'"):
        load_pairs(ws, CHUNKS)
    _write(ws, [_row("q1", "Which port?")])
    with pytest.raises(TrainingError, match="--eval-file"):
        load_pairs(ws, CHUNKS, eval_file="training_data/nope.jsonl")


def test_set_embedding_model_keeps_the_users_settings(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    cfg = root / "raftsmith.yaml"
    cfg.write_text("# my workspace\n# notes\ncorpus:\n  name: mine\n  paths: [docs, more]\nchat:\n  top_k: 7\n"
                   "embedding:\n  batch_size: 8\n")
    ws = load_workspace(cfg)
    got = set_embedding_model(ws, ".raftsmith/embedders/mine-1")
    assert got.embedding.model == ".raftsmith/embedders/mine-1" and got.embedding.batch_size == 8
    text = cfg.read_text()
    assert text.startswith("# my workspace\n# notes\n")
    assert yaml.safe_load(text) == {"corpus": {"name": "mine", "paths": ["docs", "more"]}, "chat": {"top_k": 7},
                                    "embedding": {"batch_size": 8, "model": ".raftsmith/embedders/mine-1"}}
    cfg.write_text("embedding: [1, 2]\n")
    with pytest.raises(ConfigError, match="'embedding' must be a mapping"):
        set_embedding_model(ws, "x")
