"""The rerank stage without models: ordering, the factory, offline model resolution, config errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from rag.config import RERANK_NAMES, ChatConfig, RaftsmithConfig, Workspace, parse_config
from rag.errors import ConfigError
from rag.rerank import RERANKERS, make_reranker, rerank
from rag.rerank.cross_encoder import resolve_cross_encoder_dir
from rag.types import Chunk


class TableScorer:
    """Scores read from a table keyed by chunk text: the ordering math needs no model."""

    name = "table"
    model_label = "table"

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def score(self, query: str, chunks: Sequence[Chunk]) -> list[float]:
        self.calls.append((query, len(chunks)))
        return [self.table[c.text] for c in chunks]


def _chunks(*texts: str) -> list[Chunk]:
    return [Chunk(chunk_id=f"id-{t}", source=f"{t}.md", heading="H", start_line=1, end_line=2, text=t,
                  score=1.0 / (i + 1), meta={"mode": "hybrid", "dense_score": 0.5}) for i, t in enumerate(texts)]


def _ws(tmp_path: Path, **chat: object) -> Workspace:
    return Workspace(tmp_path, RaftsmithConfig(chat=ChatConfig(**chat)))


def test_rerank_orders_by_score_and_keeps_the_first_stage_in_meta() -> None:
    cands = _chunks("a", "b", "c", "d")
    scorer = TableScorer({"a": 0.1, "b": 2.0, "c": -1.0, "d": 0.7})
    top = rerank(scorer, "q", cands, k=3)
    assert [c.text for c in top] == ["b", "d", "a"]
    assert [c.meta["retrieval_rank"] for c in top] == [2, 4, 1]
    assert [c.score for c in top] == [2.0, 0.7, 0.1]
    assert top[0].meta["retrieval_score"] == pytest.approx(0.5) and top[0].meta["rerank_score"] == 2.0
    assert top[0].meta["dense_score"] == 0.5  # the relevance gate's cosine survives
    assert scorer.calls == [("q", 4)]  # one call scores every candidate
    assert cands[1].score == 0.5 and "rerank_score" not in cands[1].meta  # the inputs are not changed


def test_equal_scores_keep_first_stage_order() -> None:
    cands = _chunks("a", "b", "c", "d", "e")
    top = rerank(TableScorer(dict.fromkeys("abcde", 0.0) | {"d": 1.0}), "q", cands, k=5)
    assert [c.text for c in top] == ["d", "a", "b", "c", "e"]


def test_rerank_edge_cases() -> None:
    scorer = TableScorer({"a": 1.0})
    assert rerank(scorer, "q", [], k=3) == [] and scorer.calls == []
    assert [c.text for c in rerank(scorer, "q", _chunks("a"), k=10)] == ["a"]
    with pytest.raises(ConfigError, match="k must be"):
        rerank(scorer, "q", _chunks("a"), k=0)

    class Short(TableScorer):
        def score(self, query: str, chunks: Sequence[Chunk]) -> list[float]:
            return [1.0]

    with pytest.raises(ValueError, match="2 chunks"):
        rerank(Short({}), "q", _chunks("a", "b"), k=1)


def test_factory_registry_is_the_config_literal_and_the_cli_choice() -> None:
    from rag.cli.eval_cmds import eval_cmd

    (param,) = [p for p in eval_cmd.params if p.name == "rerankers"]
    assert set(RERANKERS) | {"off"} == set(RERANK_NAMES) == set(param.type.choices)  # type: ignore[attr-defined]
    assert ChatConfig().rerank == "off"


def test_off_builds_nothing_and_unknown_names_are_refused(tmp_path: Path) -> None:
    assert make_reranker(_ws(tmp_path)) is None
    with pytest.raises(ConfigError, match="Unknown reranker 'colbert'.*cross-encoder, llm"):
        make_reranker(_ws(tmp_path), "colbert")
    with pytest.raises(ConfigError, match="chat.rerank"):
        parse_config({"chat": {"rerank": "colbert"}})
    with pytest.raises(ConfigError, match="chat.rerank_depth"):
        parse_config({"chat": {"rerank_depth": 0}})


def test_cross_encoder_needs_a_model_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chat.rerank_model is not set"):
        make_reranker(_ws(tmp_path, rerank="cross-encoder"))


def test_missing_or_empty_model_folders_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; fix the path.*chat.rerank: off"):
        make_reranker(_ws(tmp_path, rerank="cross-encoder", rerank_model="./models/ce"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_cross_encoder_dir(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no cross-encoder model"):
        resolve_cross_encoder_dir("empty", tmp_path)
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert resolve_cross_encoder_dir("empty", tmp_path) == (tmp_path / "empty").resolve()


def test_hub_ids_come_from_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache.*huggingface-cli download"):
        resolve_cross_encoder_dir("cross-encoder/ms-marco-MiniLM-L6-v2", tmp_path)
