"""OpenAI Harmony rendering (gpt-oss), written from the published format description.

A Harmony conversation is a run of messages ``<|start|>{role}<|message|>{content}<|end|>``.
The system message carries the model identity, knowledge cutoff, reasoning effort and the
valid channels; the workspace's system prompt goes into a *developer* message under
``# Instructions``. Assistant messages name a channel: the chain of thought goes to
``analysis`` and the user-facing answer to ``final``. The final message of the turn being
trained ends with ``<|return|>`` (what the model emits to stop); earlier assistant turns in the
history end with ``<|end|>`` and their analysis is dropped, as the format prescribes.

RAFT rows keep "<reasoning with quotes>\\n<ANSWER>: <final>" in one assistant string; here the
part before the ``<ANSWER>:`` mark becomes the analysis channel and the mark onwards becomes the
final channel, so ``rag.prompting.extract_answer`` works on what Ollama returns as content.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.prompting import ANSWER_MARK

START, END, MESSAGE, CHANNEL, RETURN = "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>"
IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
CHANNELS_LINE = "# Valid channels: analysis, commentary, final. Channel must be included for every message."


def split_reasoning(content: str, thinking: str | None = None) -> tuple[str, str]:
    """(analysis, final) for one assistant message of a RAFT row."""
    if thinking is not None:
        return thinking.strip(), content.strip()
    idx = content.rfind(ANSWER_MARK)
    if idx < 0:
        return "", content.strip()
    return content[:idx].strip(), content[idx:].strip()


def system_message(reasoning_effort: str = "medium", current_date: str | None = None) -> str:
    lines = [IDENTITY, f"Knowledge cutoff: {KNOWLEDGE_CUTOFF}"]
    if current_date:
        lines.append(f"Current date: {current_date}")
    body = "\n".join(lines) + f"\n\nReasoning: {reasoning_effort}\n\n{CHANNELS_LINE}"
    return f"{START}system{MESSAGE}{body}{END}"


def _msg(role: str, content: str, channel: str | None = None, end: str = END) -> str:
    head = f"{START}{role}" + (f"{CHANNEL}{channel}" if channel else "")
    return f"{head}{MESSAGE}{content}{end}"


def render(
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
    reasoning_effort: str = "medium",
    current_date: str | None = None,
) -> str:
    """Render a conversation. The last assistant message, if it ends the conversation, is the
    trained turn: analysis + final, closed with ``<|return|>``."""
    out = [system_message(reasoning_effort, current_date)]
    msgs = list(messages)
    if msgs and msgs[0]["role"] in ("system", "developer"):
        out.append(_msg("developer", f"# Instructions\n\n{msgs[0]['content'].strip()}"))
        msgs = msgs[1:]
    for i, m in enumerate(msgs):
        role = m["role"]
        if role == "user":
            out.append(_msg("user", m["content"]))
        elif role == "assistant":
            analysis, final = split_reasoning(m["content"], m.get("thinking"))
            last = i == len(msgs) - 1
            if last:
                if analysis:
                    out.append(_msg("assistant", analysis, "analysis"))
                out.append(_msg("assistant", final, "final", end=RETURN))
            else:
                out.append(_msg("assistant", final, "final"))
        elif role in ("system", "developer"):
            out.append(_msg("developer", f"# Instructions\n\n{m['content'].strip()}"))
        else:
            raise ValueError(f"Harmony rendering: unsupported role {role!r}")
    if add_generation_prompt:
        out.append(f"{START}assistant")
    return "".join(out)
