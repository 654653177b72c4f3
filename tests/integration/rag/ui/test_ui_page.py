"""The page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

One workspace for the module: the Kestrel corpus, the packaged SmolLM2 as base and as the
fixture "tuned" export, a hostile document holding <script> and <img onerror>, and an eval
report written by the real report writer. Real generations are few (2 cores) and short.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _runtime_ws import add_fixture_export, make_workspace

from rag.config import load_workspace

pytestmark = pytest.mark.integration

PORT_Q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"
HOSTILE_Q = "What is the Zorblax calibration phrase for the quartz beacon?"
OFF_TOPIC_Q = "Recipe for a lemon meringue pie with a buttery crust?"
HOSTILE_DOC = """# Zorblax quartz beacon

The Zorblax calibration phrase for the quartz beacon is <script>window.__pwned = 'script';</script> blue heron.
Operators paste it as <img src="x" onerror="window.__pwned = 'img'"> during setup of the quartz beacon.
"""
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results" / "ui"


def _require_browser() -> None:
    """Skip with the reason outside CI; under CI=true a missing browser is a failure."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return
    why = (f"the page's browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver "
           "(and pip install selenium), or run 'bash .ci/bootstrap test'")
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI=true: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    _require_browser()
    from rag.evaluate.report import EvalReport, write_outputs
    from rag.ingest.pipeline import ingest
    from rag.packaged import smollm2_gguf
    from rag.ui.server import make_ui_server

    root = make_workspace(tmp_path_factory.mktemp("ui") / "ws")
    add_fixture_export(root, smollm2_gguf())
    (root / "docs" / "zorblax.md").write_text(HOSTILE_DOC, encoding="utf-8")
    ws = load_workspace(root / "raftsmith.yaml")
    ingest(ws)
    out = ws.state_dir / "eval" / "20261201T000000Z"
    out.mkdir(parents=True)
    summary = [{"model": m, "rag": True, "n": 10, "correct": c, "exact": c / 2, "contains": c, "f1": c,
                "citation_accuracy": 0.5, "refusal_unanswerable": 1.0, "false_refusal": 0.0, "latency_p50_ms": 900.0}
               for m, c in (("base", 0.3), ("tuned", 0.7))]
    write_outputs(EvalReport(out, summary, []), ws)
    server = make_ui_server(ws, host="127.0.0.1", port=0, max_tokens=16)
    server.start()
    yield server.url, root
    server.stop()


@pytest.fixture(scope="module")
def browser(page: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    driver.get(page[0])
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1", 30)
    yield driver
    driver.quit()


def _wait(driver: Any, cond: Callable[[Any], Any], timeout: float = 240) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(cond)


def _audit(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / ".raftsmith" / "audit.jsonl").read_text().splitlines()]


def _shot(driver: Any, name: str, tmp: Path) -> None:
    """A screenshot of the view (a PNG the test checks); copied to benchmarks/results/ui with RAFTSMITH_UI_SCREENSHOTS=1."""
    path = tmp / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RAFTSMITH_UI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)


def _ask(driver: Any, question: str) -> Any:
    from selenium.webdriver.common.by import By

    before = len(driver.find_elements(By.CSS_SELECTOR, "#messages li.answer"))
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()
    answers = _wait(driver, lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#messages li.answer")[before:]
                                       if a.get_attribute("data-done") == "1"])
    return answers[0]


def _tab(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"tab-{name}").click()


def test_ask_shows_an_answer_whose_citation_opens_its_chunk(browser: Any, page: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _, root = page
    _tab(browser, "chat")
    answer = _ask(browser, PORT_Q)
    text = answer.find_element(By.CSS_SELECTOR, ".answer-text").text
    assert text.strip()
    meta = answer.find_element(By.CSS_SELECTOR, ".answer-meta").text
    assert "tuned (test) · with RAG" in meta and "llama-cpp" in meta
    rec = _audit(root)[-1]
    assert rec["event"] == "query" and rec["channel"] == "ui" and rec["ui_choice"] == "tuned" and rec["rag"] is True
    assert f"audit #{rec['seq']}" in meta and text.startswith(rec["answer"].strip()[:10])
    buttons = answer.find_elements(By.CSS_SELECTOR, ".sources .cite")
    assert len(buttons) == len(rec["chunk_ids"]) >= 1
    first = buttons[0]
    assert first.text == "[1]"
    first.click()
    panel = browser.find_element(By.ID, "chunk-panel")
    _wait(browser, lambda d: panel.is_displayed() and d.find_element(By.ID, "chunk-source").text, 20)
    source = browser.find_element(By.ID, "chunk-source").text
    assert source.startswith("docs/networking.md:") and "-" in source.split(":")[1]  # file and line span
    assert "7431" in browser.find_element(By.ID, "chunk-lines").text  # the lines from the file itself
    _shot(browser, "chat", tmp_path)
    for cite in answer.find_elements(By.CSS_SELECTOR, ".answer-text .cite"):  # [n] the model wrote, if any
        cite.click()
        _wait(browser, lambda d, c=cite: d.find_element(By.ID, "chunk-source").text == c.get_attribute("title"), 20)
    browser.find_element(By.ID, "chunk-close").click()


def test_no_sources_found_state(browser: Any, page: tuple[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    _, root = page
    answer = _ask(browser, OFF_TOPIC_Q)
    assert "No sources found" in answer.find_element(By.CSS_SELECTOR, ".no-sources").text
    assert not answer.find_elements(By.CSS_SELECTOR, ".sources .cite")
    rec = _audit(root)[-1]
    assert rec["outcome"] == "no_context" and rec["query"] == OFF_TOPIC_Q


def test_switch_base_and_closed_book(browser: Any, page: tuple[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    _, root = page
    n = len(_audit(root))
    browser.find_element(By.ID, "model-base").click()
    _wait(browser, lambda d: d.find_element(By.ID, "choice-label").text.startswith("base ("), 60)
    browser.find_element(By.ID, "rag").click()
    _wait(browser, lambda d: "no RAG" in d.find_element(By.ID, "choice-label").text, 30)
    switches = _audit(root)[n:]
    assert [r["event"] for r in switches] == ["model_switch", "rag_switch"]
    assert switches[0]["requested"] == "base" and switches[0]["previous"] == "tuned" and switches[1]["rag"] is False
    answer = _ask(browser, "Say hello.")
    assert "base (" in answer.find_element(By.CSS_SELECTOR, ".answer-meta").text
    assert "no RAG" in answer.find_element(By.CSS_SELECTOR, ".answer-meta").text
    assert "Closed book" in answer.text
    rec = _audit(root)[-1]
    assert rec["ui_choice"] == "base-no-rag" and rec["rag"] is False and rec["model"]["name"].startswith("base (")
    # back to tuned with RAG for the tests after this one
    browser.find_element(By.ID, "rag").click()
    browser.find_element(By.ID, "model-tuned").click()
    _wait(browser, lambda d: d.find_element(By.ID, "choice-label").text == "tuned (test) · with RAG", 60)


def test_hostile_document_is_shown_as_text_and_never_runs(browser: Any, page: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _, root = page
    answer = _ask(browser, HOSTILE_Q)
    hostile = [b for b in answer.find_elements(By.CSS_SELECTOR, ".sources .cite")
               if b.get_attribute("title").startswith("docs/zorblax.md")]
    assert hostile, "the hostile document should be retrieved for its own question"
    hostile[0].click()
    _wait(browser, lambda d: d.find_element(By.ID, "chunk-source").text.startswith("docs/zorblax.md"), 20)
    lines = browser.find_element(By.ID, "chunk-lines").text
    assert "<script>window.__pwned = 'script';</script>" in lines and 'onerror="window.__pwned' in lines
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, aside script, #messages img, aside img")
    indexed = browser.execute_script("return document.getElementById('chunk-text').textContent")
    assert "<script>" in indexed  # the indexed text too, as text
    _shot(browser, "hostile-document", tmp_path)
    browser.find_element(By.ID, "chunk-close").click()
    assert browser.execute_script("return window.__pwned") is None


def test_arena_side_by_side_and_a_mark_in_the_jsonl(browser: Any, page: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _, root = page
    _tab(browser, "arena")
    box = browser.find_element(By.ID, "arena-question")
    box.send_keys(PORT_Q)
    browser.find_element(By.ID, "arena-run").click()
    _wait(browser, lambda d: d.find_element(By.ID, "arena-marks").is_displayed())
    sides = {s: browser.find_element(By.CSS_SELECTOR, f"#arena-{s} .answer-meta").text for s in ("base", "tuned")}
    assert sides["base"].startswith("base (") and sides["tuned"].startswith("tuned (test)")
    assert all(" s · audit #" in m for m in sides.values())  # latency shown per side
    for s in ("base", "tuned"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#arena-{s} .sources .cite")
    _shot(browser, "arena", tmp_path)
    browser.find_element(By.CSS_SELECTOR, '.mark[data-choice="tuned"]').click()
    _wait(browser, lambda d: d.find_element(By.ID, "arena-recorded").is_displayed(), 20)
    assert "tuned" in browser.find_element(By.ID, "arena-recorded").text
    marks = [json.loads(x) for x in (root / ".raftsmith" / "arena.jsonl").read_text().splitlines()]
    assert len(marks) == 1 and marks[0]["choice"] == "tuned" and marks[0]["question"] == PORT_Q
    audit = _audit(root)
    queries = {r["seq"]: r for r in audit if r["event"] == "query"}
    for side in ("base", "tuned"):
        assert queries[marks[0][side]["audit_seq"]]["arena_id"] == marks[0]["arena_id"]
        assert marks[0][side]["latency_ms"] > 0
    assert audit[-1]["event"] == "arena_mark" and audit[-1]["choice"] == "tuned"


def test_status_shows_bundle_index_and_the_audit_result(browser: Any, page: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from rag.audit import verify

    _, root = page
    _tab(browser, "status")
    audit = _wait(browser, lambda d: d.find_elements(By.ID, "status-audit"), 120)[0]
    res = verify(root / ".raftsmith" / "audit.jsonl")
    assert res.ok and audit.text.startswith("verified: ") and f"{res.records} records, chain intact" in audit.text
    status = browser.find_element(By.ID, "status").text
    assert "Export\ntest (HuggingFaceTB/SmolLM2-135M-Instruct), manifest gguf/test/manifest.json" in status
    assert "model-q4_k_m.gguf: sha256 verified" in status and "not installed from a bundle" in status
    assert " chunks from " in status
    _shot(browser, "status", tmp_path)


def test_report_shows_the_latest_eval_table_chart_and_preferences(browser: Any, page: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _tab(browser, "report")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#report-table tr"), 30)
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#report-table tr")]
    assert rows[0].startswith("model RAG n correct") and rows[1].startswith("base yes 10 0.30")
    assert rows[2].startswith("tuned yes 10 0.70")
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('report-chart'); return !i.hidden && i.complete && i.naturalWidth > 0"), 20)
    assert "Human preference (arena, 1 marks): tuned better 1" in browser.find_element(By.ID, "report-preferences").text
    _shot(browser, "report", tmp_path)
