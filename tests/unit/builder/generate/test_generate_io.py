"""Question files, torn-line repair, retry decisions, redaction: pure logic, no network."""

from __future__ import annotations

import email.utils
import json
import random
import time
from pathlib import Path

import pytest

from builder.generate.jsonl import JsonlAppender, read_rows, repair_jsonl
from builder.generate.privacy import PayloadLog, Redactor, is_loopback_url, luhn_ok, require_local
from builder.generate.questions import (
    is_self_contained,
    load_question_file,
    load_questions,
    question_id,
    questions_from_synthesis,
)
from builder.generate.retry import decide, parse_retry_after
from rag.errors import ConfigError
from rag.types import Chunk

# ---------------------------------------------------------------- questions


def write(tmp_path: Path, text: str, name: str = "q.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_items_strings_and_mappings(tmp_path: Path) -> None:
    p = write(tmp_path, """
questions:
  - category: Ops
    items:
      - "Which port does the gateway use?"
      - {id: ops-port, question: "What port?", answer: 7431}
      - {id: gone, question: "Unknown?", answer: null, unanswerable: true}
      - {id: para, question: "Port, reworded?", answer: "7431", paraphrase_of: ops-port}
""")
    qs = load_question_file(p)
    assert [q.id for q in qs] == [question_id("Which port does the gateway use?"), "ops-port", "gone", "para"]
    assert qs[0].answer is None and qs[0].category == "Ops" and not qs[0].unanswerable
    assert qs[1].answer == "7431"
    assert qs[2].unanswerable and qs[3].held_out
    # stable across runs and whitespace/case
    assert question_id("Which  port does the gateway USE?") == qs[0].id


def test_a_holdout_file_holds_every_item_out(tmp_path: Path) -> None:
    listed = write(tmp_path, """
holdout: true
questions:
  - category: Ops
    items:
      - {id: h-port, question: "Which port, reworded?", answer: "7431"}
      - {id: h-price, question: "What does it cost?", answer: null, unanswerable: true}
""", "listed.yaml")
    assert all(q.held_out for q in load_question_file(listed))
    mapped = write(tmp_path, "holdout: true\nOps:\n  - 'A question here?'\n", "mapped.yaml")
    qs = load_question_file(mapped)
    assert [q.category for q in qs] == ["Ops"] and qs[0].held_out  # 'holdout' is not a category
    plain = write(tmp_path, "Ops:\n  - 'A question here?'\n", "plain.yaml")
    assert not load_question_file(plain)[0].held_out


def test_category_mapping_form(tmp_path: Path) -> None:
    qs = load_question_file(write(tmp_path, "Ops:\n  - 'A question here?'\nNet:\n  - {question: 'B question?', answer: b}\n"))
    assert [(q.category, q.answer) for q in qs] == [("Ops", None), ("Net", "b")]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("questions:\n  - category: A\n    items:\n      - 42\n", "q.yaml:4: questions[0].items[0]: an item must be a string"),
        ("questions:\n  - category: A\n    items:\n      - {id: x}\n", "q.yaml:4: questions[0].items[0]: item has no 'question'"),
        ("questions:\n  - category: A\n", "q.yaml:2: questions[0]: each entry needs"),
        ("questions: 3\n", "'questions' must be a list"),
        ("- a\n- b\n", "must hold a mapping"),
        ("questions: [\n", "not valid YAML"),
        ("questions:\n  - category: A\n    items:\n      - {question: 'x?', answer: [1]}\n", "questions[0].items[0].answer"),
    ],
)
def test_bad_shapes_name_file_line_and_fix(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_question_file(write(tmp_path, text))
    assert words in str(exc.value).replace(str(tmp_path) + "/", "")


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, "questions:\n  - category: A\n    items:\n      - {id: x, question: 'One?'}\n", "a.yaml")
    write(tmp_path, "questions:\n  - category: A\n    items:\n      - {id: x, question: 'Two?'}\n", "b.yaml")
    with pytest.raises(ConfigError, match="used twice"):
        load_questions([tmp_path])
    with pytest.raises(ConfigError, match="does not exist"):
        load_questions([tmp_path / "nope.yaml"])


def test_synthesized_questions_must_be_self_contained() -> None:
    assert not is_self_contained("What does this document say about ports?")
    assert not is_self_contained("According to the passage, what is X?")
    assert not is_self_contained("Summarize the text above.")
    assert is_self_contained("Which TCP port does the Kestrel KX-7 relay use?")
    c = Chunk("c1", "d.md", "Ports", 1, 2, "The Kestrel relay listens on TCP port 7431. Replace the fan filter every "
              "six months. The uplink key rotates daily.")
    data = {"facts": [
        {"fact": "The relay listens on TCP port 7431.", "answer": "7431", "category": "facts", "questions": [
            "Which port does the Kestrel relay use?", "What does the passage describe?",
            "which port does the kestrel relay use?", "?", "On which TCP port does a Kestrel relay listen?"]},
        {"fact": "The fan filter is replaced every six months.", "answer": "every six months", "category": "weird",
         "questions": ["How often is the Kestrel fan filter replaced?"]},
        {"fact": "The relay listens on TCP port 7431", "answer": "7431", "category": "facts",
         "questions": ["What port is the Kestrel relay's listener on?"]},  # the same fact again
        {"fact": "The relay speaks MQTT over port 1883.", "answer": "1883", "category": "facts",
         "questions": ["Which MQTT port does the Kestrel relay use?"]},  # not in the chunk: invented
        {"fact": "The uplink key rotates daily.", "answer": "daily", "category": "facts",
         "questions": ["Summarize the text above."]},  # no usable question
        "not an object",
    ]}
    qs, rejected = questions_from_synthesis(c, data, 5)
    assert [q.question for q in qs] == ["Which port does the Kestrel relay use?",
                                        "On which TCP port does a Kestrel relay listen?",
                                        "How often is the Kestrel fan filter replaced?"]
    port, port2, fan = qs
    # one fact = one id; its other phrasing points at it, as a question file's paraphrases do
    assert port.answer == port2.answer == "7431" and port2.extra["fact"] == port.id and "fact" not in port.extra
    assert port2.id.startswith(port.id + "~") and fan.category == "facts" and fan.answer == "every six months"
    assert all(q.oracle_chunk_ids == ["c1"] and q.origin == "synth:c1" for q in qs)
    assert rejected == {"synth_not_self_contained": 2, "synth_duplicate": 1, "synth_empty": 1,
                        "synth_fact_duplicate": 1, "synth_answer_not_in_chunk": 1, "synth_fact_without_question": 1,
                        "synth_fact_malformed": 1}
    assert questions_from_synthesis(c, {"facts": data["facts"]}, 5, max_facts=1)[0][:1] == qs[:1]
    assert questions_from_synthesis(c, {"questions": []}, 3) == ([], {})  # an empty or old-style reply


# ---------------------------------------------------------------- jsonl


def test_torn_last_line_is_repaired(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    with JsonlAppender(p) as w:
        for i in range(3):
            w.append({"meta": {"id": f"r{i}"}})
    good = p.read_bytes()
    p.write_bytes(good + b'{"meta": {"id": "r3"')
    assert repair_jsonl(p) == len(b'{"meta": {"id": "r3"')
    assert p.read_bytes() == good
    # a complete-looking but unparsable last line is dropped too
    p.write_bytes(good + b'{"meta": \n')
    repair_jsonl(p)
    assert [r["meta"]["id"] for r in read_rows(p)] == ["r0", "r1", "r2"]
    with JsonlAppender(p) as w:
        w.append({"meta": {"id": "r3"}})
    assert [json.loads(x)["meta"]["id"] for x in p.read_text().splitlines()] == ["r0", "r1", "r2", "r3"]
    assert repair_jsonl(tmp_path / "missing.jsonl") == 0


# ---------------------------------------------------------------- retry


def test_retry_decisions() -> None:
    rng = random.Random(0)
    d = decide(attempt=0, max_retries=3, status=429, headers={"retry-after": "7"})
    assert d.retry and d.delay == 7 and d.reason == "rate_limited"
    assert decide(attempt=0, max_retries=3, status=429, headers={"Retry-After": "9999"}).delay == 120  # capped
    d = decide(attempt=0, max_retries=3, status=429, rng=rng)
    assert d.retry and 0 <= d.delay <= 0.5
    for code in (500, 502, 503, 504, 408):
        assert decide(attempt=1, max_retries=3, status=code).retry
    for code in (400, 401, 402, 403, 404, 422):
        d = decide(attempt=0, max_retries=3, status=code)
        assert not d.retry and d.reason == f"http_{code}"
    assert not decide(attempt=3, max_retries=3, status=503).retry  # bounded
    for failure in ("timeout", "connection", "malformed"):
        assert decide(attempt=0, max_retries=1, failure=failure).retry
        assert not decide(attempt=1, max_retries=1, failure=failure).retry
    delays = [decide(attempt=a, max_retries=10, status=500, cap=4.0, rng=rng).delay for a in range(10)]
    assert all(0 <= x <= 4.0 for x in delays)


def test_retry_after_http_date() -> None:
    now = time.time()
    assert abs(parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) - 30) <= 1  # type: ignore[operator]
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0


# ---------------------------------------------------------------- privacy


def test_redaction_kinds_counts_and_restore() -> None:
    text = (
        "Mail ops@orvane.example or call +1 415-555-0134. Host 10.74.0.7 and fe80::1:2:3. "
        "Card 4111 1111 1111 1111 but not 4111 1111 1111 1112. SSN 123-45-6789. "
        "Key sk-proj-Abcdefgh1jklmnopqrstuvwx and token " + "a" * 8 + "0123456789abcdef0123456789abcdef. "
        "Codename BLUEHERON and again ops@orvane.example."
    )
    red = Redactor(deny_list=["blueheron"]).redact(text)
    out = red.text
    for secret in ("ops@orvane.example", "415-555-0134", "10.74.0.7", "4111 1111 1111 1111", "123-45-6789",
                   "sk-proj-Abcdefgh1jklmnopqrstuvwx", "0123456789abcdef0123456789abcdef", "BLUEHERON"):
        assert secret not in out, secret
    assert "4111 1111 1111 1112" in out  # fails Luhn: not a card
    assert red.counts["email"] == 1 and out.count("[EMAIL_1]") == 2  # same value, same placeholder
    assert {"phone", "ip", "card", "ssn", "key", "token", "deny"} <= set(red.counts)
    assert red.restore(out) == text
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_redact_messages_shares_placeholders() -> None:
    msgs, red = Redactor().redact_messages([{"role": "system", "content": "a@b.io"}, {"role": "user", "content": "x a@b.io"}])
    assert msgs[0]["content"] == "[EMAIL_1]" and msgs[1]["content"] == "x [EMAIL_1]" and red.counts == {"email": 1}
    assert Redactor().redact("Version 4.11.2 on port 7431, 3968 bytes").counts == {}


def test_loopback_guard_and_payload_log(tmp_path: Path) -> None:
    assert is_loopback_url("http://127.0.0.1:8080/v1") and is_loopback_url("http://localhost/v1")
    assert is_loopback_url("http://[::1]:9/v1") and not is_loopback_url("https://openrouter.ai/api/v1")
    assert not is_loopback_url(None) and not is_loopback_url("http://10.0.0.5/v1")
    with pytest.raises(ConfigError, match="local-only"):
        require_local("https://openrouter.ai/api/v1", "openrouter")
    log = PayloadLog(tmp_path / "p.jsonl")
    digest = log.record({"messages": [{"content": "secret text"}]}, {"email": 2}, "q1")
    line = json.loads((tmp_path / "p.jsonl").read_text())
    assert line["sha256"] == digest and line["redactions"] == {"email": 2} and "secret" not in json.dumps(line)


CREDENTIALS = [
    "sk-or-v1-0123456789abcdef0123456789abcdef",
    "sk-proj-Abcdefgh1jklmnopqrstuvwx",
    "rk_live".replace("_", "-") + "-abcdefghijklmnop1234",
    "ghp_" + "A1b2C3d4E5" * 4,
    "github_pat_" + "11ABCDEFG0" * 4,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "xoxb-1234567890-abcdefghij",
    "hf_" + "abcdefghij" * 4,
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1L7VLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----",
]


@pytest.mark.parametrize("secret", CREDENTIALS)
def test_redaction_and_bundle_scan_share_the_credential_shapes(secret: str) -> None:
    from rag.bundle import find_secret

    text = f"config:\n  note: {secret}\n  port: 7431\n"
    red = Redactor().redact(text)
    assert red.counts.get("key") == 1, red.counts
    assert "MIIEowIBAAKCAQEA" not in red.text and secret not in red.text  # a PEM body goes with its header
    assert red.restore(red.text) == text
    assert find_secret(text, live=[], assignments=False) is not None
