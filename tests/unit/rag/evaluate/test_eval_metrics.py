"""Evaluation metrics and question loading, checked by hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.errors import ConfigError
from rag.evaluate import (
    contains_match,
    content_tokens,
    correct_match,
    exact_match,
    is_refusal,
    load_question_file,
    normalize,
    percentile,
    summarize,
    token_f1,
)


def test_normalize_and_contains() -> None:
    assert normalize("  `/etc/kestrel/kx7.toml`. ") == "/etc/kestrel/kx7.toml"
    assert contains_match("The file is `/etc/kestrel/kx7.toml`.", "/etc/kestrel/kx7.toml")
    assert contains_match("port 7431", "7431") and not contains_match("port 7432", "7431")
    assert contains_match("Safe Mode", "safe mode") and not contains_match("anything", "")


def test_exact_is_the_whole_answer_squad_normalized() -> None:
    assert exact_match("`/etc/kestrel/kx7.toml`.", "/etc/kestrel/kx7.toml")
    assert exact_match("The E-931", "e-931") and exact_match(" 73  Days ", "73 days")
    assert exact_match("239.41.7.31", "239.41.7.31") and not exact_match("239.41.7.3", "239.41.7.31")
    # A reply that merely contains the reference is not an exact answer.
    assert not exact_match("The file is `/etc/kestrel/kx7.toml`.", "/etc/kestrel/kx7.toml")
    assert not exact_match("port 7431", "7431") and not exact_match("anything", "")
    assert not exact_match("", "")


def test_punctuation_inside_an_answer_is_kept() -> None:
    # Deleting it would merge different answers: a garbled IP, a shifted decimal point.
    assert not exact_match("10.7.40.7", "10.74.0.7") and not exact_match("1.6", "16")
    assert not exact_match("OV-FAN-2.7", "OV-FAN-27") and exact_match("OV-FAN-27.", "ov-fan-27")
    assert exact_match("(kx-witness)", "kx-witness") and exact_match('"57600"', "57600")


def test_contains_needs_whole_words() -> None:
    assert not contains_match("a batch of 6400", "640") and not contains_match("code E-4170", "E-417")
    assert contains_match("The batch size is 640.", "640") and contains_match("error E-417, then", "E-417")


def test_correct_is_content_not_format() -> None:
    # The base model's full sentence from the demo is a right answer.
    assert correct_match("The relay sends sensor readings to the KX-7 on the TCP port 7431.", "7431")
    assert correct_match("7431", "7431") and correct_match("**7431**", "7431")
    assert correct_match("It is `/etc/kestrel/kx7.toml`.", "/etc/kestrel/kx7.toml")
    # Wrong content is wrong however it is worded.
    assert not correct_match("The relay listens on TCP port 7432.", "7431")
    assert not correct_match("I do not know.", "7431") and not correct_match("", "7431")
    # Whole numbers and tokens: no digit run or dotted quad matches inside another.
    assert not correct_match("10.7.40.7", "10.74.0.7") and correct_match("Use 10.74.0.7.", "10.74.0.7")
    assert not correct_match("a batch of 6400", "640") and correct_match("a batch of 640 rows", "640")
    assert not correct_match("OV-FAN-2.7", "OV-FAN-27")
    # Every content word of a longer reference must be there, in any order.
    assert correct_match("The uplink certificate had expired.", "expired uplink certificate")
    assert not correct_match("The certificate had expired.", "expired uplink certificate")


def test_correct_normalizes_units_and_separators() -> None:
    assert correct_match("It waits 30 seconds.", "30 s") and correct_match("30s", "30 seconds")
    assert correct_match("after 30 sec", "30 s") and not correct_match("after 300 seconds", "30 s")
    assert correct_match("7,431 ms", "7431 milliseconds") and correct_match("Retention is 73 days.", "73 days")
    assert correct_match("85%", "85 percent") and not correct_match("58%", "85 percent")
    assert correct_match("E–931", "E-931")
    assert content_tokens("**30s**, then 7,431") == ["30", "s", "then", "7431"]


def test_token_f1_hand_computed() -> None:
    assert token_f1("expired uplink certificate", "expired uplink certificate") == 1.0
    # pred 4 tokens, ref 3, common 2 -> p=0.5 r=2/3 -> f1 = 2*0.5*0.667/1.1667 = 0.5714
    assert token_f1("an expired TLS certificate", "expired uplink certificate") == pytest.approx(4 / 7)
    assert token_f1("nothing", "7431") == 0.0
    assert token_f1("10.74.0.7", "10.74.0.7") == 1.0  # an IP is one token


def test_refusal_patterns() -> None:
    for t in ["I don't know.", "The documents do not contain the price.", "I cannot find that.", "There is no information about it."]:
        assert is_refusal(t), t
    for t in ["The port is 7431.", "Run kxctl clock sync --source ntp."]:
        assert not is_refusal(t), t


def test_percentile() -> None:
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0 and percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 0.95) == 100.0


def test_question_yaml(tmp_path: Path) -> None:
    f = tmp_path / "q.yaml"
    f.write_text("questions:\n  - category: a\n    items:\n      - {id: x, question: 'Q1?', answer: '42'}\n"
                 "      - {id: y, question: 'Q2?', answer: null, unanswerable: true}\n      - 'Bare question?'\n")
    items = load_question_file(f)
    assert [(i.id, i.answer, i.unanswerable) for i in items] == [("x", "42", False), ("y", None, True), ("q3", None, False)]
    f.write_text("just a string")
    with pytest.raises(ConfigError, match="questions"):
        load_question_file(f)


def test_summarize() -> None:
    rows = [
        {"unanswerable": False, "reference": "1", "exact": True, "f1": 1.0, "citation_correct": True, "oracle_retrieved": True, "refused": False, "latency_ms": 10.0},
        {"unanswerable": False, "reference": "2", "exact": False, "f1": 0.5, "citation_correct": False, "oracle_retrieved": True, "refused": True, "latency_ms": 30.0},
        {"unanswerable": True, "reference": None, "refused": True, "latency_ms": 20.0},
    ]
    s = summarize(rows, "base", True)
    assert s["exact"] == 0.5 and s["f1"] == 0.75 and s["citation_accuracy"] == 0.5
    assert s["refusal_unanswerable"] == 1.0 and s["false_refusal"] == 0.5 and s["oracle_recall"] == 1.0
    assert s["latency_mean_ms"] == 20.0 and s["latency_p50_ms"] == 20.0


def test_judge_grade_parsing() -> None:
    from rag.evaluate.judge import parse_grade

    assert parse_grade('Sure. {"score": 1, "reason": "matches"}') == (1.0, "matches")
    assert parse_grade('```json\n{"score": 0.5, "reason": "partly"}\n```') == (0.5, "partly")
    for bad in ["no json here", '{"score": 7}', '{"score": true}', '{"reason": "x"}']:
        with pytest.raises(ValueError):
            parse_grade(bad)


def test_judge_needs_a_teacher(tmp_path: Path) -> None:
    from rag.config import init_workspace
    from rag.evaluate.judge import make_judge_client

    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match="teacher"):
        make_judge_client(ws)
    ws.config.teacher.provider = "openai-compatible"
    with pytest.raises(ConfigError, match="base_url"):
        make_judge_client(ws)


def test_forgetting_probe_set_is_shipped_and_well_formed() -> None:
    from rag.evaluate import load_probe

    items = load_probe()
    assert len(items) >= 100
    assert len({it.id for it in items}) == len(items)
    assert len({it.question.lower() for it in items}) == len(items)
    assert all(it.answers and all(a.strip() for a in it.answers) for it in items)


def test_probe_scoring_accepts_any_listed_answer_as_content() -> None:
    from rag.evaluate import probe_correct

    assert probe_correct("The capital of France is Paris.", ["Paris"])
    assert probe_correct("It was written by William Shakespeare.", ["Shakespeare", "William Shakespeare"])
    assert probe_correct("<ANSWER>: 4", ["4", "four"]) and probe_correct("Two plus two is four.", ["4", "four"])
    assert not probe_correct("The capital of France is Lyon.", ["Paris"])
    assert not probe_correct("There are 14 days.", ["4", "four"])


def test_confident_wrong_counts_answers_given_instead_of_refusals() -> None:
    rows = [
        {"unanswerable": False, "reference": "1", "correct": True, "exact": True, "f1": 1.0, "refused": False, "latency_ms": 1.0},
        {"unanswerable": False, "reference": "2", "correct": False, "exact": False, "f1": 0.0, "refused": False, "latency_ms": 1.0},
        {"unanswerable": False, "reference": "3", "correct": False, "exact": False, "f1": 0.0, "refused": True, "latency_ms": 1.0},
        {"unanswerable": True, "reference": None, "refused": False, "latency_ms": 1.0},
    ]
    s = summarize(rows, "tuned", False)
    # wrong or unanswerable: rows 2, 3, 4; answered anyway: rows 2 and 4
    assert s["confident_wrong"] == round(2 / 3, 4) and s["correct"] == round(1 / 3, 4)
