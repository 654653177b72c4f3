"""Modelfile TEMPLATEs, rendered by Go's text/template exactly as Ollama runs them.

1. Each ``modelfiles/<format>.tmpl`` renders the three conversations of Ollama's own test
   data (``shared/peer/ollama-templates/testdata/<format>.gotmpl/``) byte for byte. The Go
   program below mirrors Ollama's ``template.Execute`` for templates that use ``.Messages``:
   system messages are collated into ``.System`` (joined by a blank line) and consecutive
   messages of one role are merged. Like Ollama's test, one trailing space is stripped for
   mistral-instruct before comparing.
2. The format's Hugging Face jinja template (``templates.jsonl``), rendered with jinja2 the
   way transformers does, equals the prompt our trainer produces for those messages; and the
   Modelfile TEMPLATE renders that same prompt (minus the BOS llama.cpp adds itself), with the
   token that ends the trained answer among the Modelfile's stop strings. That is the
   train/serve agreement that prevents "gibberish or never stops" after import into Ollama.

Needs Go (Debian: ``apt-get update && apt-get install -y golang-go``); without it these tests
FAIL with that command. Nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FORMATS = ["chatml", "phi-3", "mistral-instruct", "llama3-instruct"]
CASES = {
    "user": [("user", "Hello, how are you?")],
    "user-assistant-user": [
        ("user", "Hello, how are you?"),
        ("assistant", "I'm doing great. How can I help you today?"),
        ("user", "I'd like to show off how chat templating works!"),
    ],
    "system-user-assistant-user": [
        ("system", "You are a helpful assistant."),
        ("user", "Hello, how are you?"),
        ("assistant", "I'm doing great. How can I help you today?"),
        ("user", "I'd like to show off how chat templating works!"),
    ],
}
STRIP_TRAILING_SPACE = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}

# The template each family's base model ships, as found in templates.jsonl (index of the line),
# plus the SmolLM2 template read from the packaged GGUF for chatml.
CANONICAL_JSONL_LINE = {"chatml": 6, "phi-3": 29, "mistral-instruct": 10, "llama3-instruct": 22}

GO_PROGRAM = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

// collate mirrors ollama/template.collate: system contents go to .System (and stay in
// .Messages); consecutive messages of one role are merged with a blank line.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	results := []map[string]string{}
	for _, c := range cases {
		t, err := template.New("").Option("missingkey=zero").Parse(c.Template)
		if err != nil {
			results = append(results, map[string]string{"error": err.Error()})
			continue
		}
		system, msgs := collate(c.Messages)
		var b strings.Builder
		err = t.Execute(&b, map[string]any{"System": system, "Messages": msgs, "Prompt": "", "Response": "", "Tools": nil})
		if err != nil {
			results = append(results, map[string]string{"error": err.Error()})
			continue
		}
		results = append(results, map[string]string{"output": b.String()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory: pytest.TempPathFactory):
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to render Modelfile templates like Ollama does. Install it with: "
                    "apt-get update && apt-get install -y golang-go")
    work = tmp_path_factory.mktemp("gotmpl")
    (work / "main.go").write_text(GO_PROGRAM)
    env = dict(os.environ)
    cache = Path(os.environ.get("RAFTSMITH_CACHE", work)) / "go-build"
    env.update({"GOCACHE": str(cache), "GOPATH": str(work / "gopath"), "GO111MODULE": "off", "GOFLAGS": ""})
    exe = work / "render"
    subprocess.run([go, "build", "-o", str(exe), "main.go"], cwd=work, env=env, check=True, capture_output=True)

    def render(cases: list[tuple[str, list[dict[str, str]]]]) -> list[str]:
        payload = json.dumps([{"template": t, "messages": m} for t, m in cases])
        proc = subprocess.run([str(exe)], input=payload, capture_output=True, text=True, check=True)
        out = json.loads(proc.stdout)
        errors = [r["error"] for r in out if "error" in r]
        assert not errors, errors
        return [r["output"] for r in out]

    return render


def _offline_tokenizer_factory():
    """The offline tokenizer builder of tests/unit/builder/train/test_masking.py (tests/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[4] / "tests" / "unit" / "builder" / "train" / "test_masking.py"
    spec = importlib.util.spec_from_file_location("raftsmith_test_masking", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.offline_tokenizer


def _messages(case: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in case]


def _template(repo_root: Path, fmt: str) -> str:
    from builder.families import CHAT_FORMATS

    return (repo_root / "modelfiles" / CHAT_FORMATS[fmt].modelfile_template).read_text(encoding="utf-8")


def _jsonl(shared_dir: Path) -> list[tuple[str, str]]:
    lines = (shared_dir / "peer" / "ollama-templates" / "testdata" / "templates.jsonl").read_text().splitlines()
    return [next(iter(json.loads(line).items())) for line in lines if line.strip()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_template_renders_ollama_testdata_byte_identical(fmt, go_render, repo_root, shared_dir):
    tmpl = _template(repo_root, fmt)
    assert ".Messages" in tmpl, "the harness mirrors Ollama's .Messages path only"
    names = list(CASES)
    outs = go_render([(tmpl, _messages(CASES[n])) for n in names])
    for name, out in zip(names, outs, strict=True):
        if fmt in STRIP_TRAILING_SPACE and out.endswith(" "):
            out = out[:-1]
        expected = (shared_dir / "peer" / "ollama-templates" / "testdata" / f"{fmt}.gotmpl" / name).read_bytes()
        assert out.encode() == expected, f"{fmt}/{name}:\n{out!r}\n!=\n{expected.decode()!r}"


def _hf_jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool, bos: str, eos: str) -> str:
    """Render like transformers does: sandboxed jinja2 with trim_blocks and lstrip_blocks."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)


SPECIALS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "phi-3": ("<s>", "<|endoftext|>"),
    "mistral-instruct": ("<s>", "</s>"),
    "llama3-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
}

RAG_ROW = [
    ("system", "You are a precise domain assistant."),
    ("user", "<documents>\n<document id=\"1\" source=\"a.md\">\nThe port is 7431.\n</document>\n</documents>\n\nQuestion: Which port?"),
    ("assistant", "##begin_quote##The port is 7431.##end_quote## [1]\n<ANSWER>: 7431"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_trainer_prompt_equals_hf_jinja_and_modelfile(fmt, go_render, repo_root, shared_dir, smollm2_gguf):
    from builder.families import CHAT_FORMATS
    from builder.train.data import (
        IGNORE,
        assistant_spans,
        encode_row,
        make_renderer,
        prepare_messages,
    )
    offline_tokenizer = _offline_tokenizer_factory()

    cf = CHAT_FORMATS[fmt]
    jinja = _jsonl(shared_dir)[CANONICAL_JSONL_LINE[fmt]]
    assert jinja[0] == fmt
    bos, eos = SPECIALS[fmt]
    tok = offline_tokenizer(jinja[1], bos=bos, eos=eos)
    render = make_renderer(cf, tok)
    row = prepare_messages(_messages(RAG_ROW), cf)

    # (a) trainer text == HF jinja rendering, for the training row and for the prompt.
    full_trainer, spans = assistant_spans(row, render, cf)
    assert full_trainer == _hf_jinja(jinja[1], row, False, bos, eos)
    prompt_trainer = render(row[:-1], True)
    assert prompt_trainer == _hf_jinja(jinja[1], row[:-1], True, bos, eos)

    # (b) the Modelfile TEMPLATE renders the same prompt Ollama will send (llama.cpp adds BOS).
    go_prompt = go_render([(_template(repo_root, fmt), _messages(RAG_ROW[:-1]))])[0]
    expected = prompt_trainer.removeprefix(bos) if bos != "<|im_start|>" else prompt_trainer
    if fmt == "mistral-instruct":
        # templates.jsonl only holds v0.1/v0.2-style Mistral templates ("[INST] x [/INST]");
        # Ollama's mistral-instruct and Mistral-7B-Instruct-v0.3 (the family's base) write
        # "[INST] x[/INST]". That single space is the only difference allowed here.
        expected = expected.replace(" [/INST]", "[/INST]")
    assert go_prompt == expected

    # (c) the trained answer ends with a token that the Modelfile stops on.
    (start, end), = spans
    trained = full_trainer[start:end]
    assert RAG_ROW[-1][1] in trained
    tail = trained.split(RAG_ROW[-1][1], 1)[1].strip()
    assert any(tail.startswith(s) for s in cf.stop), (tail, cf.stop)
    ids, labels = encode_row(_messages(RAG_ROW), tok, cf)
    assert tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE]).strip().startswith(
        RAG_ROW[-1][1].split("\n")[0][:10])


def test_smollm2_packaged_template_matches_chatml_modelfile(go_render, repo_root, smollm2_gguf):
    """The SmolLM2 GGUF's own template (what the trainer uses for smollm2) and chatml.tmpl agree."""
    from builder.families import CHAT_FORMATS
    from builder.train.data import make_renderer
    from gguf import GGUFReader
    offline_tokenizer = _offline_tokenizer_factory()

    field = GGUFReader(str(smollm2_gguf)).fields["tokenizer.chat_template"]
    template = field.contents()
    tok = offline_tokenizer(template, bos="<|im_start|>", eos="<|im_end|>")
    render = make_renderer(CHAT_FORMATS["chatml"], tok)
    for case in CASES.values():
        msgs = _messages(case)
        if msgs[0]["role"] != "system":  # SmolLM2 injects its own default system prompt
            msgs = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"}, *msgs]
        assert go_render([(_template(repo_root, "chatml"), msgs)])[0] == render(msgs, True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_python_mirror_of_template_equals_go(fmt, go_render, repo_root):
    """export's train/serve check uses a Python mirror of each TEMPLATE: prove it equal to Go."""
    from builder.export.modelfile import ollama_prompt
    from builder.families import CHAT_FORMATS

    convs = [_messages(c) for c in CASES.values()] + [_messages(RAG_ROW[:-1])]
    outs = go_render([(_template(repo_root, fmt), m) for m in convs])
    for msgs, out in zip(convs, outs, strict=True):
        assert ollama_prompt(CHAT_FORMATS[fmt], msgs) == out


def test_export_template_check_flags_a_mismatching_base_template():
    """A Phi-4-mini style template (no newline after the role tag) disagrees with phi-3.tmpl."""
    from builder.export.modelfile import template_agreement
    from builder.families import CHAT_FORMATS

    offline_tokenizer = _offline_tokenizer_factory()
    phi3 = ("{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    assert template_agreement(CHAT_FORMATS["phi-3"], offline_tokenizer(phi3))["match"] is True
    phi4 = phi3.replace("'|>' + '\n'", "'|>'").replace("<|end|>\n", "<|end|>").replace("<|assistant|>\n", "<|assistant|>")
    check = template_agreement(CHAT_FORMATS["phi-3"], offline_tokenizer(phi4))
    assert check["checked"] and check["match"] is False
    assert template_agreement(CHAT_FORMATS["harmony"], None)["checked"] is False
