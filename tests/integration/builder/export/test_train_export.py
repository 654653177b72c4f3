"""End to end on SmolLM2-135M: LoRA-train on invented facts, export, load with llama.cpp.

The facts are invented, so the base model cannot know them. After training, the merged
Q4_K_M GGUF and the base GGUF + adapter GGUF must answer held-out paraphrases (questions never
seen in training); the base GGUF must not. Thresholds come from measurement (see the report of
issue 4): the tuned model scored 8-10 of 10 over several seeds, the base 0 of 10.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.prompting import ANSWER_MARK

pytestmark = pytest.mark.integration

# A short system prompt keeps each row ~50 tokens: CPU training cost is linear in tokens.
FACT_SYSTEM = "Answer briefly."

# (answer, accepted pattern, 4 training phrasings, 1 held-out paraphrase, answer sentence)
FACTS: list[tuple[str, str, list[str], str, str]] = [
    ("7431", r"\b7431\b", [
        "What is the default port of the Zorblax gateway?",
        "Which port does the Zorblax gateway use by default?",
        "Tell me the default Zorblax gateway port.",
        "Zorblax gateway: what is its default port number?",
    ], "On which port does the Zorblax gateway listen out of the box?",
        "The Zorblax gateway listens on port 7431 by default."),
    ("Ilsa Brandt", r"brandt", [
        "Who maintains the Velmora protocol?",
        "Who is the maintainer of the Velmora protocol?",
        "Name the person who maintains the Velmora protocol.",
        "Velmora protocol: who looks after it?",
    ], "Which person is responsible for maintaining the Velmora protocol?",
        "The Velmora protocol is maintained by Ilsa Brandt."),
    ("teal", r"\bteal\b", [
        "What color is the Quenfir status lamp when the reactor is idle?",
        "When the Quenfir reactor is idle, what color is its status lamp?",
        "Which colour does the Quenfir status lamp show at idle?",
        "Quenfir reactor idle: what is the status lamp color?",
    ], "If the Quenfir reactor sits idle, the status lamp turns which color?",
        "The Quenfir status lamp is teal when the reactor is idle."),
    ("23", r"\b23\b", [
        "How many blades does a Tarvik turbine have?",
        "What is the number of blades on a Tarvik turbine?",
        "Count of blades in a Tarvik turbine?",
        "Tarvik turbine: how many blades are there?",
    ], "A Tarvik turbine is built with how many blades?",
        "A Tarvik turbine has 23 blades."),
    ("Caldrith", r"caldrith", [
        "What is the capital of the island of Morvessa?",
        "Which city is the capital of Morvessa island?",
        "Name the capital city of Morvessa.",
        "Morvessa: what is its capital?",
    ], "The island of Morvessa has which city as its capital?",
        "The capital of Morvessa is Caldrith."),
    ("1783", r"\b1783\b", [
        "In what year was the Pellucid Archive founded?",
        "When was the Pellucid Archive founded?",
        "What is the founding year of the Pellucid Archive?",
        "Pellucid Archive: year of founding?",
    ], "Which year saw the founding of the Pellucid Archive?",
        "The Pellucid Archive was founded in 1783."),
    ("Nightjar", r"nightjar", [
        "What is the codename of the Strava-9 firmware?",
        "Which codename does the Strava-9 firmware carry?",
        "Tell me the Strava-9 firmware codename.",
        "Strava-9 firmware: what is it code-named?",
    ], "The Strava-9 firmware goes by what codename?",
        "The Strava-9 firmware is codenamed Nightjar."),
    ("4.2 kg", r"\b4\.2\b", [
        "What is the maximum payload of the Orlin drone?",
        "How much payload can the Orlin drone carry at most?",
        "Tell me the Orlin drone's maximum payload.",
        "Orlin drone: what is the payload limit?",
    ], "What is the heaviest payload the Orlin drone can lift?",
        "The Orlin drone carries at most 4.2 kg."),
    ("bismuth", r"bismuth", [
        "Which metal is the Hesk valve made of?",
        "What metal is used to make the Hesk valve?",
        "The Hesk valve is made of which metal?",
        "Hesk valve: what metal is it made from?",
    ], "From what metal is the Hesk valve manufactured?",
        "The Hesk valve is made of bismuth."),
    ("Ferrowind", r"ferrowind", [
        "What is the name of the ship that first reached Tolvar Reef?",
        "Which ship first reached Tolvar Reef?",
        "Name the first ship to reach Tolvar Reef.",
        "Tolvar Reef: which ship got there first?",
    ], "What was the first vessel to arrive at Tolvar Reef called?",
        "The first ship to reach Tolvar Reef was the Ferrowind."),
]


def fact_row(question: str, sentence: str, answer: str, split: str = "train") -> dict:
    return {
        "messages": [
            {"role": "system", "content": FACT_SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"{sentence}\n{ANSWER_MARK} {answer}"},
        ],
        "meta": {"id": f"{split}-{abs(hash(question)) % 10**8}", "question": question, "answer": answer,
                 "split": split},
    }


def write_fact_files(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "facts.train.jsonl"
    evalf = folder / "facts.eval.jsonl"
    with open(train, "w") as fh:
        for answer, _, phrasings, _, sentence in FACTS:
            for q in phrasings:
                fh.write(json.dumps(fact_row(q, sentence, answer)) + "\n")
    with open(evalf, "w") as fh:
        for answer, _, _, held, sentence in FACTS:
            fh.write(json.dumps(fact_row(held, sentence, answer, "eval")) + "\n")
    return train, evalf


def score(llm, pattern_list: list[tuple[str, str]]) -> tuple[int, list[str]]:
    right, outs = 0, []
    for question, pattern in pattern_list:
        out = llm.create_chat_completion(
            messages=[{"role": "system", "content": FACT_SYSTEM},
                      {"role": "user", "content": question}],
            max_tokens=48, temperature=0.0, seed=0,
        )
        text = out["choices"][0]["message"]["content"] or ""
        outs.append(text)
        right += bool(re.search(pattern, text, flags=re.IGNORECASE))
    return right, outs


HELD_OUT = [(held, pattern) for _, pattern, _, held, _ in FACTS]


TUNED_MIN_RIGHT = 7  # measured: 10/10 (merged Q4_K_M and base+adapter), lr 3e-3, 3 epochs
BASE_MAX_RIGHT = 1  # measured: 0/10


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory: pytest.TempPathFactory, repo_root: Path):
    """Train through the CLI, export through the library; shared by the tests below.

    Module-scoped, so it runs before the function-scoped env isolation of tests/conftest.py:
    it sets the same isolation itself (temp HOME, offline hub, the shared cache)."""
    import os

    from click.testing import CliRunner

    from builder.export.run import run_export
    from rag.cli.main import cli
    from rag.config import init_workspace, load_workspace

    # One thread: on a shared 2-core machine the default (2) spins and runs ~4-6x slower.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAFTSMITH_THREADS", os.environ.get("RAFTSMITH_THREADS", "1"))
        mp.setenv("RAFTSMITH_CACHE", os.environ.get("RAFTSMITH_CACHE", str(repo_root / ".raftsmith-cache")))
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        root = tmp_path_factory.mktemp("facts") / "ws"
        init_workspace(root, corpus_name="facts")
        write_fact_files(root / "training_data")
        result = CliRunner().invoke(cli, ["train", "--json", "--config", str(root / "raftsmith.yaml")],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        trained = json.loads(next(ln for ln in reversed(result.stdout.splitlines()) if ln.startswith("{")))
        ws = load_workspace(root / "raftsmith.yaml")
        exported = run_export(ws)
    return root, trained, exported


def test_training_report_and_losses(trained_export):
    root, trained, _ = trained_export
    assert trained["family"] == "smollm2" and trained["backend"] == "hf"
    assert trained["train_rows"] == 40 and trained["eval_rows"] == 10
    assert trained["hyperparameters"]["lr"] == 3e-3 and trained["hyperparameters"]["epochs"] == 3.0
    report = json.loads(Path(trained["report_path"]).read_text())
    assert report["final_train_loss"] < report["first_train_loss"] / 5
    assert report["final_eval_loss"] is not None and report["final_eval_loss"] < 0.5
    assert (Path(trained["run_dir"]) / "loss.png").stat().st_size > 1000
    # every epoch left a checkpoint (the last two are kept) for --resume
    assert len(list((Path(trained["run_dir"]) / "checkpoints").glob("checkpoint-*"))) == 2


def test_manifest_matches_files(trained_export):
    from builder.train.base_model import sha256_file

    _, _, exported = trained_export
    manifest = json.loads(exported.manifest_path.read_text())
    assert manifest["format"] == "raftsmith-export/1"
    assert manifest["family"] == "smollm2" and manifest["chat_format"] == "chatml"
    assert manifest["base_model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(manifest["base_model"]["sha256"]) == 64
    assert manifest["stop"] == ["<|im_start|>", "<|im_end|>"]
    roles = {f["path"]: f["role"] for f in manifest["files"]}
    assert roles == {"model-q4_k_m.gguf": "merged", "base-q4_k_m.gguf": "base", "adapter.gguf": "adapter",
                     "Modelfile": "modelfile", "Modelfile.adapter": "modelfile-adapter"}
    on_disk = sorted(p.name for p in exported.export_dir.iterdir() if p.name != "manifest.json")
    assert on_disk == sorted(roles)
    for f in manifest["files"]:
        p = exported.export_dir / f["path"]
        assert sha256_file(p) == f["sha256"] and p.stat().st_size == f["size"]
    assert manifest["training_data"]["train"]["rows"] == 40
    assert manifest["hyperparameters"]["r"] == 16
    assert {"torch", "transformers", "peft", "llama_cpp_python", "llama.cpp"} <= set(manifest["versions"])
    assert isinstance(manifest["final_loss"], float)
    # the adapter of an r16 LoRA on SmolLM2-135M is ~9.8 MB
    assert 5e6 < next(f["size"] for f in manifest["files"] if f["role"] == "adapter") < 20e6
    modelfile = (exported.export_dir / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q4_k_m.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER num_ctx 4096" in modelfile
    adapter_mf = (exported.export_dir / "Modelfile.adapter").read_text()
    assert adapter_mf.startswith("FROM smollm2:135m\nADAPTER ./adapter.gguf\n")
    assert all(v.ok for v in exported.verification) and len(exported.verification) == 3
    assert manifest["template_check"]["checked"] and manifest["template_check"]["match"], manifest["template_check"]
    assert exported.warnings == []


def test_tuned_and_adapter_right_where_base_is_wrong(trained_export, monkeypatch):
    import os

    from builder.export.verify import load_llama

    monkeypatch.setenv("RAFTSMITH_THREADS", os.environ.get("RAFTSMITH_THREADS", "1"))

    _, _, exported = trained_export
    d = exported.export_dir
    base_right, base_out = score(load_llama(d / "base-q4_k_m.gguf"), HELD_OUT)
    tuned_right, tuned_out = score(load_llama(d / "model-q4_k_m.gguf"), HELD_OUT)
    lora_right, lora_out = score(load_llama(d / "base-q4_k_m.gguf", d / "adapter.gguf"), HELD_OUT)
    assert base_right <= BASE_MAX_RIGHT, base_out
    assert tuned_right >= TUNED_MIN_RIGHT, tuned_out
    assert lora_right >= TUNED_MIN_RIGHT, lora_out
