"""--resume: a training process killed after its first checkpoint continues from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHILD = """
import sys
from rag.config import load_workspace
from builder.train.run import run_train
run_train(load_workspace(sys.argv[1]), epochs=3)
"""


def _rows(n: int) -> str:
    out = []
    for i in range(n):
        out.append(json.dumps({"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"What is code {i} of the Quenfir set?"},
            {"role": "assistant", "content": f"<ANSWER>: Q-{i * 37 % 101}"}]}) + "\n")
    return "".join(out)


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    from builder.train.run import RUN_FILE, latest_run, run_train
    from rag.config import init_workspace, load_workspace
    from rag.errors import TrainingError

    ws = init_workspace(tmp_path / "ws", corpus_name="codes")
    (ws.training_dir / "codes.train.jsonl").write_text(_rows(8))  # batch 4 -> 2 steps per epoch
    # no replay rows (they would add 64 rows, 16 steps per epoch); resume rebuilds them the same
    text = ws.config_path.read_text()
    assert "  replay: 64" in text
    ws.config_path.write_text(text.replace("  replay: 64", "  replay: 0"))
    env = dict(os.environ, RAFTSMITH_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ws.config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    first: Path | None = None
    try:
        while time.time() < deadline and proc.poll() is None:
            run = latest_run(ws)
            if run is not None:
                done = [p for p in (run / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
                if done:
                    first = done[0]
                    time.sleep(1.0)  # let the checkpoint's last files land
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert first is not None and first.name == "checkpoint-2"
    run = latest_run(ws)
    assert json.loads((run / RUN_FILE).read_text())["status"] == "running"

    res = run_train(load_workspace(ws.config_path), resume=True)
    assert res.run_dir == run and res.resumed_from and res.resumed_from.endswith("checkpoint-2")
    meta = json.loads((run / RUN_FILE).read_text())
    assert meta["status"] == "done" and (run / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads(sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
                       .joinpath("trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # no step trained twice after the resume
    with pytest.raises(TrainingError, match="Nothing to resume"):
        run_train(load_workspace(ws.config_path), resume=True)
