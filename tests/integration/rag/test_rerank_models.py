"""The rerank stage for real: a tiny CrossEncoder built and saved here, the packaged SmolLM2 as the
llm judge, and answer()/eval using chat.rerank when it is configured."""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

import pytest
import yaml
from _runtime_ws import make_workspace
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import ChatConfig, RaftsmithConfig, Workspace, load_workspace
from rag.errors import ConfigError
from rag.rerank import make_reranker, rerank
from rag.rerank.cross_encoder import load_cross_encoder
from rag.types import Chunk

pytestmark = pytest.mark.integration

TOPICS = {
    "net": ["port", "tcp", "socket", "network", "ingest", "listen"],
    "fan": ["fan", "airflow", "cooling", "heat", "module", "alarm"],
    "cake": ["cake", "flour", "sugar", "oven", "bake", "cocoa"],
}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[w for ws in TOPICS.values() for w in ws]]


def _pairs(rnd: random.Random, n: int) -> list[tuple[str, str, float]]:
    out = []
    names = list(TOPICS)
    for i in range(n):  # half matching, half not: with one in three positive the tiny model can stall at p=1/3
        qt = rnd.choice(names)
        pt = qt if i % 2 == 0 else rnd.choice([t for t in names if t != qt])
        out.append((" ".join(rnd.sample(TOPICS[qt], 2)), " ".join(rnd.sample(TOPICS[pt], 4)), float(qt == pt)))
    return out


def build_tiny_cross_encoder(folder: Path, train_steps: int) -> Path:
    """A 2-layer BERT cross-encoder over a 23-word vocabulary, saved with CrossEncoder.save_pretrained.

    With ``train_steps`` > 0 it first learns, on obvious pairs, that a query and a passage of
    the same topic belong together (the ordering test needs a model whose right order is known).
    """
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    torch.manual_seed(0)
    raw = folder / "hf"
    raw.mkdir(parents=True)
    (raw / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(raw / "vocab.txt"), do_lower_case=True, model_max_length=64)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # type: ignore[call-arg]
    model = BertForSequenceClassification(cfg)
    threads = torch.get_num_threads()
    if train_steps:
        torch.set_num_threads(1)  # tiny matrices: one thread is several times faster than two busy ones
        rnd = random.Random(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for _ in range(train_steps):
            batch = _pairs(rnd, 32)
            enc = tok([q for q, _, _ in batch], [p for _, p, _ in batch], padding=True, return_tensors="pt")
            logits = model(**enc).logits.squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([y for *_, y in batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.1, f"the tiny cross-encoder did not learn its pairs (loss {loss.item():.3f})"
        model.eval()
        torch.set_num_threads(threads)
    model.save_pretrained(raw)
    tok.save_pretrained(raw)
    out = folder / "ce"
    CrossEncoder(str(raw), device="cpu").save_pretrained(str(out))
    return out


def _chunk(text: str, i: int) -> Chunk:
    return Chunk(chunk_id=f"c{i}", source=f"d{i}.md", heading="", start_line=1, end_line=1, text=text,
                 meta={"dense_score": 0.5})


@pytest.fixture(scope="module")
def trained_ce(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("ce-trained"), train_steps=400)


def test_tiny_cross_encoder_loads_and_scores_like_the_model_itself(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    folder = build_tiny_cross_encoder(tmp_path, train_steps=0)
    ws = Workspace(tmp_path, RaftsmithConfig(chat=ChatConfig(rerank="cross-encoder", rerank_model="ce")))
    reranker = make_reranker(ws)  # a folder relative to the workspace
    assert reranker is not None and reranker.name == "cross-encoder"
    cands = [_chunk(t, i) for i, t in enumerate(["port tcp socket", "cake flour", "fan airflow heat"])]
    scores = reranker.score("tcp port", cands)
    direct = CrossEncoder(str(folder), device="cpu").predict([("tcp port", c.text) for c in cands])
    assert scores == pytest.approx([float(x) for x in direct], abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3  # a random model still tells these apart
    # the order rerank() returns is the order of the model's own scores
    top = rerank(reranker, "tcp port", cands, k=3)
    assert [c.chunk_id for c in top] == [cands[i].chunk_id for i in sorted(range(3), key=lambda i: -scores[i])]
    assert load_cross_encoder(str(folder)) is load_cross_encoder(str(folder))  # loaded once per process


def test_trained_tiny_cross_encoder_puts_the_matching_passage_first(trained_ce: Path) -> None:
    reranker = load_cross_encoder(str(trained_ce))
    passages = ["cake flour sugar oven", "fan airflow cooling heat", "port tcp socket listen"]
    cands = [_chunk(t, i) for i, t in enumerate(passages)]
    for query, want in (("tcp network", "port tcp socket listen"), ("cooling alarm", "fan airflow cooling heat"),
                        ("bake cocoa", "cake flour sugar oven")):
        top = rerank(reranker, query, cands, k=2)
        assert top[0].text == want, (query, [(c.text, c.score) for c in top])
        assert top[0].score > top[1].score


def test_a_broken_cross_encoder_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConfigError, match="Could not load the cross-encoder.*chat.rerank_model"):
        load_cross_encoder(str(tmp_path / "bad"))


@pytest.fixture(scope="module")
def llm_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("ws")
    return Workspace(root, RaftsmithConfig(chat=ChatConfig(rerank="llm")))


PORT = ("Networking > Ports", "The Kestrel KX-7 relay listens on TCP port 7431 for sensor ingest by default. "
        "Change it with the ingest.port setting.")
CAKE = ("Recipes", "To bake a chocolate cake, mix flour, sugar, cocoa and eggs, then bake at 180 C for 35 minutes.")
FAN = ("Hardware > Fans", "The fan module of the KX-7 is hot-swappable; replace it when the airflow alarm is raised.")


def test_llm_judge_scores_the_relevant_passage_above_irrelevant_ones(llm_ws: Workspace) -> None:
    reranker = make_reranker(llm_ws)
    assert reranker is not None and reranker.name == "llm" and "base" in reranker.model_label
    cands = [Chunk(f"c{i}", "k.md", h, 1, 2, t) for i, (h, t) in enumerate([CAKE, FAN, PORT])]
    q = "Which TCP port does the Kestrel KX-7 relay listen on for sensor ingest?"
    scores = reranker.score(q, cands)
    assert scores[2] > scores[0] and scores[2] > scores[1], scores
    assert rerank(reranker, q, cands, k=1)[0].chunk_id == "c2"
    # the KV cache reused between passages gives the scores a fresh evaluation gives
    again = reranker.score(q, [cands[2], cands[0]])
    assert again == pytest.approx([scores[2], scores[0]], abs=1e-3)


def test_llm_judge_reuses_the_chat_models_loaded_llama(llm_ws: Workspace) -> None:
    from rag.llm.factory import make_backend
    from rag.llm.resolve import resolve_model
    from rag.rerank.llm_judge import LlmReranker

    reranker = make_reranker(llm_ws)
    chat_backend = make_backend(llm_ws, resolve_model(llm_ws, "base", "llama-cpp"))
    assert isinstance(reranker, LlmReranker)
    assert reranker.backend._llm is chat_backend._llm  # type: ignore[attr-defined]


def test_unknown_llm_rerank_model_names_the_choices(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, RaftsmithConfig(chat=ChatConfig(rerank="llm", rerank_model="nope")))
    with pytest.raises(ConfigError, match="Unknown model 'nope'"):
        make_reranker(ws)


def _rerank_workspace(root: Path, **chat: object) -> Path:
    make_workspace(root, chat={"rerank": "llm", "rerank_depth": 6, **chat})
    return root


def test_answer_reads_the_reranked_chunks_and_the_audit_shows_them(tmp_path: Path) -> None:
    from rag.answer import Answerer

    root = _rerank_workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    engine = Answerer(ws)
    try:
        q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"
        first, _ = engine.relevant(q, 6)
        res = engine.answer(q, model="base")
        assert engine.reranker is not None and engine.reranker.passages_scored >= 6
    finally:
        engine.close()
    assert 1 <= len(res.retrieved) <= 4 and "rerank_ms" in res.timings
    assert all("rerank_score" in c.meta and "retrieval_rank" in c.meta for c in res.retrieved)
    scores = [c.meta["rerank_score"] for c in res.retrieved]
    assert scores == sorted(scores, reverse=True)
    assert [c.chunk_id for c in res.retrieved] == [c.chunk_id for c in first][: len(res.retrieved)]
    rec = [json.loads(x) for x in (root / ".raftsmith" / "audit.jsonl").read_text().splitlines()][-1]
    assert rec["chunk_ids"] == [c.chunk_id for c in res.retrieved]
    assert rec["scores"] == [round(s, 6) for s in scores] and "llama-cpp" in rec["rerank"]


def test_eval_retrieval_reports_modes_with_and_without_rerank(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", chat={"rerank_depth": 6})
    (root / "q.yaml").write_text(yaml.safe_dump({"questions": [{"category": "t", "items": [
        {"id": "port", "question": "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?",
         "answer": "7431"},
        {"id": "skew", "question": "Which Kestrel KX-7 error code means the clock skew is above 3.5 s?",
         "answer": "E-417"}]}]}))
    args = ["eval", "--retrieval", "--questions", str(root / "q.yaml"), "--k", "2", "--config", str(root / "raftsmith.yaml")]
    res = CliRunner().invoke(cli, [*args, "--rerank", "llm", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert set(rep["recall"]) == {"dense", "bm25", "hybrid", "dense+llm", "bm25+llm", "hybrid+llm"}
    assert set(rep["p50_ms"]) == set(rep["recall"]) and all(v > 0 for v in rep["p50_ms"].values())
    assert rep["rerank_depth"] == 6 and "llm" in rep["rerankers"]
    # six passages read by SmolLM2 cost more than the first stage alone
    assert rep["p50_ms"]["hybrid+llm"] > rep["p50_ms"]["hybrid"]
    text = CliRunner().invoke(cli, [*args, "--rerank", "llm"])
    assert text.exit_code == 0 and "hybrid+llm" in text.output and "p50" in text.output and "<- best" in text.output
    plain = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)  # chat.rerank off: no reranked rows
    assert set(plain["recall"]) == {"dense", "bm25", "hybrid"} and "rerankers" not in plain


def test_eval_retrieval_with_the_configured_cross_encoder(tmp_path: Path, trained_ce: Path) -> None:
    root = make_workspace(tmp_path / "ws", chat={"rerank": "cross-encoder", "rerank_model": str(trained_ce),
                                                  "rerank_depth": 5})
    (root / "q.yaml").write_text("questions:\n  - category: t\n    items:\n"
                                 "      - {id: port, question: \"Which TCP port does the relay listen on?\", answer: \"7431\"}\n")
    res = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", str(root / "q.yaml"), "--json",
                                   "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert {"dense+cross-encoder", "bm25+cross-encoder", "hybrid+cross-encoder"} <= set(rep["recall"])
    bad = make_workspace(tmp_path / "ws2", chat={"rerank": "cross-encoder", "rerank_model": str(tmp_path / "nowhere")})
    res = CliRunner().invoke(cli, ["ask", "what port?", "--model", "base", "--config", str(bad / "raftsmith.yaml")])
    assert res.exit_code == 1 and "chat.rerank_model folder" in res.output and "Traceback" not in res.output


def test_bundle_carries_the_cross_encoder_and_the_laptop_uses_it(trained_ce: Path, tmp_path: Path) -> None:
    """chat.rerank_model points outside the workspace (a folder the user downloaded): the
    bundle carries it as rerank/, install points the config there, and the installed
    workspace reranks with the same scores, offline."""
    from rag.bundle import create_bundle, install_bundle

    root = make_workspace(tmp_path / "home", chat={"rerank": "cross-encoder", "rerank_model": str(trained_ce)})
    ws = load_workspace(root / "raftsmith.yaml")
    report = create_bundle(ws, tmp_path / "b.tar")
    laptop = tmp_path / "laptop"
    install_bundle(tmp_path / "b.tar", laptop)
    installed = load_workspace(laptop / "raftsmith.yaml")
    assert installed.config.chat.rerank_model == "rerank" and (laptop / "rerank" / "config.json").is_file()
    assert not any("rerank" in w for w in report.warnings), report.warnings
    cands = [_chunk(t, i) for i, t in enumerate(["cake flour sugar oven", "port tcp socket listen"])]
    here, there = make_reranker(ws), make_reranker(installed)
    assert here is not None and there is not None
    assert there.score("tcp network", cands) == pytest.approx(here.score("tcp network", cands), abs=1e-6)
    assert str(trained_ce) not in (laptop / "raftsmith.yaml").read_text()


def test_bundle_without_the_configured_cross_encoder_names_the_fix(tmp_path: Path) -> None:
    from rag.bundle import create_bundle

    root = make_workspace(tmp_path / "home", chat={"rerank": "cross-encoder", "rerank_model": str(tmp_path / "gone")})
    with pytest.raises(ConfigError, match="cannot be bundled.*chat.rerank_model"):
        create_bundle(load_workspace(root / "raftsmith.yaml"), tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()
    # rerank off: a stale rerank_model is left out with a warning, and the bundle is made
    cfg_path = root / "raftsmith.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    data["chat"]["rerank"] = "off"
    cfg_path.write_text(yaml.safe_dump(data))
    report = create_bundle(load_workspace(root / "raftsmith.yaml"), tmp_path / "b.tar")
    assert any("holds no reranker" in w for w in report.warnings)
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert not any(n.startswith("rerank/") for n in tar.getnames())
        cfg = yaml.safe_load(tar.extractfile("raftsmith.yaml").read())  # type: ignore[union-attr]
    assert cfg["chat"].get("rerank_model") is None
