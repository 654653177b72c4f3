"""APIBench TorchHub as the benchmarks read it (no index imports, so it loads on any machine).

Each of the 94 API records becomes one markdown document:

    # <api_name>: <functionality>
    Domain: <domain>. Framework: <framework>.
    <description>
    API call: `<api_call>`
    Trained on <performance.dataset>; accuracy <performance.accuracy>.
    ## Example            (example_code, fenced)

An eval question (torchhub_eval.json) is the text between ``###Instruction:`` and
``###Output``; a training question (torchhub_train.json) is the ``'Instruction'`` field. The
right document is the record whose ``api_call`` equals the question's.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any


def render(rec: dict[str, Any]) -> str:
    perf = rec.get("performance") or {}
    if isinstance(perf, dict):
        acc = perf.get("accuracy")
        perf_line = f"Trained on {perf.get('dataset', 'n/a')}; accuracy {json.dumps(acc) if not isinstance(acc, str) else acc}."
    else:
        perf_line = f"Performance: {perf}"
    code = rec.get("example_code") or ""
    if isinstance(code, list):
        code = "\n".join(code)
    return (
        f"# {rec['api_name']}: {rec.get('functionality', '')}\n\n"
        f"Domain: {rec.get('domain', '')}. Framework: {rec.get('framework', '')}.\n\n"
        f"{rec.get('description', '')}\n\n"
        f"API call: `{rec['api_call']}`\n\n{perf_line}\n\n"
        f"## Example\n\n```python\n{code}\n```\n"
    )


def question_of(code: str) -> str:
    """An eval question: the text between ``###Instruction:`` and ``###Output``."""
    m = re.search(r"###Instruction:\s*(.*?)\s*(?:###Output|$)", code, re.S)
    return (m.group(1) if m else code).strip()


def train_question(code: str) -> str:
    """torchhub_train.json writes ``{'Instruction': <question>, 'Output': ...}``."""
    m = re.search(r"'Instruction':\s*(.*?),\s*'Output'", code, re.S)
    return (m.group(1) if m else code).strip().strip("\"'").strip()


def read_lines(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (the three APIBench files)."""
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
