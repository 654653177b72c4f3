"""Knowledge rows: closed-book rows beside RAFT rows, phrasings of one fact, the phrasing split
and its manifest, and the guard against training on a held-out phrasing. Real index (MiniLM,
FAISS, SQLite), reference answers (no teacher)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from generate_support import ensure_index

from rag.prompting import ANSWER_MARK, SYSTEM_PROMPT, SYSTEM_PROMPT_CLOSED_BOOK

pytestmark = pytest.mark.integration


def _set(cfg: Path, **sections: dict) -> None:
    data = yaml.safe_load(cfg.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    cfg.write_text(yaml.safe_dump(data))


def _rows(ws_root: Path, split: str) -> list[dict]:
    p = ws_root / "training_data" / f"kestrel.{split}.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def _answerable_items(ws_root: Path) -> list[dict]:
    data = yaml.safe_load((ws_root / "domain_questions" / "kestrel.yaml").read_text())
    return [it for g in data["questions"] for it in g["items"] if isinstance(it, dict) and it.get("answer")]


def test_every_fact_trained_with_closed_book_rows(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = ensure_index(sample_workspace, plain=False)
    _set(cfg, raft={"n_distractors": 1})
    s = run_generate(load_workspace(cfg), teacher="none")
    train, evals = _rows(sample_workspace, "train"), _rows(sample_workspace, "eval")
    closed = [r for r in train if r["meta"].get("closed_book")]
    raft = [r for r in train if not r["meta"].get("closed_book") and not r["meta"].get("refusal")]
    # every training phrasing has both kinds, and the two kinds use the two answering prompts
    assert len(closed) == len(raft) == s.closed_book_rows > 0
    assert {r["meta"]["closed_book_of"] for r in closed} == {r["meta"]["id"] for r in raft}
    for r in closed:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == SYSTEM_PROMPT_CLOSED_BOOK and "<documents>" not in r["messages"][1]["content"]
        assert r["messages"][2]["content"] == f"{ANSWER_MARK} {r['meta']['answer']}"
    assert all(r["messages"][0]["content"] == SYSTEM_PROMPT for r in raft)
    # no item the user wrote is withheld: each fact has a training phrasing, and the eval
    # split holds only extra phrasings of trained facts
    trained_q = {r["meta"]["question"] for r in raft}
    items = _answerable_items(sample_workspace)
    for it in items:
        assert {it["question"], *it.get("paraphrases", [])} & trained_q, it["id"]
    assert evals and all("~" in r["meta"]["id"] for r in evals)
    eval_facts = {r["meta"]["id"].split("~")[0] for r in evals}
    assert eval_facts <= {r["meta"]["id"].split("~")[0] for r in raft}
    # paraphrases count as phrasings: 4 per item in the sample
    assert len(raft) + len(evals) > 3 * len(items)
    man = json.loads((sample_workspace / "training_data" / "kestrel.split.json").read_text())
    assert man["eval_split"] == "phrasings" and man["facts_withheld"] == 0
    assert man["facts"] == man["facts_trained"] == len(items)
    assert man["rows"]["closed_book"] == len(closed) and man["eval_ids"] == sorted(r["meta"]["id"] for r in evals)
    assert s.split == man


def test_closed_book_share_and_off(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = ensure_index(sample_workspace, plain=False)
    _set(cfg, raft={"n_distractors": 1, "closed_book": 0.0, "eval_split": "none"})
    s = run_generate(load_workspace(cfg), teacher="none")
    assert s.closed_book_rows == 0 and not any(r["meta"].get("closed_book") for r in _rows(sample_workspace, "train"))
    assert not _rows(sample_workspace, "eval")
    for f in (sample_workspace / "training_data").glob("*.jsonl"):
        f.unlink()
    _set(cfg, raft={"closed_book": 0.5})
    s = run_generate(load_workspace(cfg), teacher="none")
    raft = [r for r in _rows(sample_workspace, "train") if not r["meta"].get("closed_book") and not r["meta"].get("refusal")]
    assert 0.35 * len(raft) <= s.closed_book_rows <= 0.65 * len(raft)


def test_facts_split_is_explicit_and_withholds_chunks(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = ensure_index(sample_workspace, plain=False)
    _set(cfg, raft={"n_distractors": 1, "eval_split": "facts", "eval_fraction": 0.2})
    s = run_generate(load_workspace(cfg), teacher="none")
    assert s.split["eval_split"] == "facts" and s.split["facts_withheld"] > 0
    train_oracles = {c for r in _rows(sample_workspace, "train") for c in r["meta"]["oracle_chunk_ids"]}
    assert not train_oracles & {c for r in _rows(sample_workspace, "eval") for c in r["meta"]["oracle_chunk_ids"]}


def test_training_on_a_heldout_phrasing_is_refused(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace
    from rag.errors import ConfigError

    cfg = ensure_index(sample_workspace, plain=False)
    _set(cfg, raft={"n_distractors": 1, "questions": ["domain_questions/kestrel.yaml"]})
    s = run_generate(load_workspace(cfg), teacher="none")
    before = {p.name: p.read_bytes() for p in (sample_workspace / "training_data").glob("*.jsonl")}
    assert s.new_rows > 0 and before
    # a paraphrase that is, but for case and spacing, a question of the held-out file
    heldout = yaml.safe_load((sample_workspace / "domain_questions" / "kestrel-heldout.yaml").read_text())
    victim = heldout["questions"][0]["items"][0]["question"]
    qfile = sample_workspace / "domain_questions" / "kestrel.yaml"
    data = yaml.safe_load(qfile.read_text())
    data["questions"][0]["items"][0]["paraphrases"].append("  " + victim.upper() + " ")
    qfile.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="also held out for evaluation") as exc:
        run_generate(load_workspace(cfg), teacher="none")
    assert "net-relay-port-p1" in str(exc.value) and "reword or remove" in str(exc.value)
    # nothing already generated is lost
    assert {p.name: p.read_bytes() for p in (sample_workspace / "training_data").glob("*.jsonl")} == before
