"""gpt-oss rows in OpenAI Harmony: reasoning in the analysis channel, answer in final.

Rendering only (no weights). The expected strings are written out by hand from the published
Harmony format: system message (identity, knowledge cutoff, reasoning effort, valid channels),
the workspace system prompt as a developer message under "# Instructions", and the trained
assistant turn as an analysis message closed by <|end|> followed by a final message closed by
<|return|>.
"""

from __future__ import annotations

from builder.families import CHAT_FORMATS, get_family
from builder.train import harmony
from rag.prompting import SYSTEM_PROMPT, build_messages
from rag.types import Chunk

SYSTEM_BLOCK = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
)


def test_raft_row_reasoning_goes_to_analysis_answer_to_final():
    msgs = [
        {"role": "system", "content": "Use the documents."},
        {"role": "user", "content": "Which port?"},
        {"role": "assistant", "content": "##begin_quote##Port 7431.##end_quote## [1] says it.\n<ANSWER>: 7431"},
    ]
    assert harmony.render(msgs) == (
        SYSTEM_BLOCK
        + "<|start|>developer<|message|># Instructions\n\nUse the documents.<|end|>"
        + "<|start|>user<|message|>Which port?<|end|>"
        + "<|start|>assistant<|channel|>analysis<|message|>##begin_quote##Port 7431.##end_quote## [1] says it.<|end|>"
        + "<|start|>assistant<|channel|>final<|message|><ANSWER>: 7431<|return|>"
    )


def test_generation_prompt_and_history_drop_old_analysis():
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "thinking about Q1\n<ANSWER>: A1"},
        {"role": "user", "content": "Q2"},
    ]
    out = harmony.render(msgs, add_generation_prompt=True)
    assert out == (SYSTEM_BLOCK + "<|start|>user<|message|>Q1<|end|>"
                   + "<|start|>assistant<|channel|>final<|message|><ANSWER>: A1<|end|>"
                   + "<|start|>user<|message|>Q2<|end|><|start|>assistant")
    assert "thinking about Q1" not in out


def test_explicit_thinking_field_and_answer_without_mark():
    analysis, final = harmony.split_reasoning("Just the answer.")
    assert (analysis, final) == ("", "Just the answer.")
    out = harmony.render([{"role": "user", "content": "Q"},
                          {"role": "assistant", "content": "A", "thinking": "because"}], reasoning_effort="low")
    assert "Reasoning: low" in out
    assert out.endswith("<|start|>assistant<|channel|>analysis<|message|>because<|end|>"
                        "<|start|>assistant<|channel|>final<|message|>A<|return|>")


def test_a_real_rag_row_renders_and_the_registry_points_to_harmony():
    fam = get_family("gpt-oss")
    fmt = CHAT_FORMATS[fam.chat_format]
    assert fmt.renderer == "harmony" and "<|return|>" in fmt.stop
    chunk = Chunk(chunk_id="c1", source="docs/a.md", heading="Ports", start_line=1, end_line=2,
                  text="The gateway listens on 7431.", score=1.0, meta={})
    msgs = build_messages("Which port?", [chunk]) + [
        {"role": "assistant", "content": "##begin_quote##The gateway listens on 7431.##end_quote## [1]\n<ANSWER>: 7431"}]
    out = harmony.render(msgs)
    assert out.count(f"<|start|>developer<|message|># Instructions\n\n{SYSTEM_PROMPT}") == 1
    assert '<document id="1" source="docs/a.md" title="Ports">' in out
    assert out.endswith("<|channel|>final<|message|><ANSWER>: 7431<|return|>")
