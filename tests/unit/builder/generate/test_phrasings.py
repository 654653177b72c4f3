"""Many phrasings per fact: `paraphrases:` in question files, and the phrasing split."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.generate.quality import split_by_phrasing
from builder.generate.questions import load_question_file, phrasing_key
from rag.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "q.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_paraphrases_become_phrasings_of_one_fact(tmp_path: Path) -> None:
    qs = load_question_file(_write(tmp_path, """
questions:
  - category: Net
    items:
      - id: port
        question: "Which port does the relay use?"
        answer: "7431"
        paraphrases:
          - "On what port does the relay listen?"
          - "  which PORT does the relay use  "
          - "On what port does the relay listen"
          - "Name the relay's TCP port."
"""))
    assert [q.question for q in qs] == ["Which port does the relay use?", "On what port does the relay listen?",
                                        "Name the relay's TCP port."]  # repeats (case, spacing, end mark) dropped
    assert {q.answer for q in qs} == {"7431"} and {q.category for q in qs} == {"Net"}
    assert qs[0].id == "port" and all(q.id.startswith("port~") for q in qs[1:])
    assert len({q.id for q in qs}) == 3
    assert all(q.extra["fact"] == "port" for q in qs[1:]) and not qs[1].held_out
    # ids do not depend on the order the paraphrases are listed in
    again = load_question_file(_write(tmp_path, """
questions:
  - {id: port, question: "Which port does the relay use?", answer: "7431",
     paraphrases: ["Name the relay's TCP port.", "On what port does the relay listen?"]}
"""))
    assert {q.id for q in again} == {q.id for q in qs}


@pytest.mark.parametrize("body, words", [
    ('paraphrases: "one string"', "must be a list"),
    ("paraphrases: [\"\"]", "non-empty question string"),
    ("paraphrases: [3]", "non-empty question string"),
])
def test_bad_paraphrases_name_the_fix(tmp_path: Path, body: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_question_file(_write(tmp_path, f"""
questions:
  - category: Net
    items:
      - id: port
        question: "Which port?"
        answer: "7431"
        {body}
"""))


def test_paraphrases_only_on_answerable_training_items(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="answerable training items"):
        load_question_file(_write(tmp_path, """
questions:
  - {id: x, question: "Who is the CEO?", answer: null, paraphrases: ["Name the CEO."]}
"""))
    with pytest.raises(ConfigError, match="paraphrase_of"):
        load_question_file(_write(tmp_path, """
holdout: true
questions:
  - {id: x, question: "Which port?", answer: "1", paraphrases: ["What port?"]}
"""))


def test_phrasing_key() -> None:
    assert phrasing_key("  Which PORT?  ") == phrasing_key("which port") != phrasing_key("which ports")


def test_phrasing_split_withholds_no_fact() -> None:
    items = [(f"f{i}", f"f{i}") for i in range(40)]
    items += [(f"f{i}~{j}", f"f{i}") for i in range(30) for j in range(3)]  # 30 facts with 4 phrasings
    split = split_by_phrasing(items, 0.2, seed=0)
    evals = [i for i, s in split.items() if s == "eval"]
    assert len(evals) == 6  # 0.2 of the 30 facts that have several phrasings, one phrasing each
    facts = {}
    for item_id, fact in items:
        facts.setdefault(fact, []).append(split[item_id])
    assert all("train" in s for s in facts.values())  # every fact keeps a training phrasing
    assert all(split[f"f{i}"] == "train" for i in range(40))  # the user's own wording is trained on
    assert split_by_phrasing(items, 0.2, seed=0) == split  # stable
    assert split_by_phrasing(items, 0.2, seed=1) != split
    assert set(split_by_phrasing(items, 0.0, seed=0).values()) == {"train"}
