"""A reference answer that is code (an API call, a command) finds the chunk that holds it."""

from __future__ import annotations

from builder.generate.plan import _answer_oracle
from builder.generate.questions import Question
from rag.types import Chunk


def _c(i: int, text: str) -> Chunk:
    return Chunk(chunk_id=f"c{i}", source=f"docs/{i}.md", heading="", start_line=1, end_line=2, text=text)


def test_api_call_and_command_answers_find_their_chunk() -> None:
    chunks = [
        _c(0, "MiDaS computes depth.\n\nAPI call: `torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='DPT_Large', pretrained=True)`"),
        _c(1, "MiDaS small.\n\nAPI call: `torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='MiDaS_small', pretrained=True)`"),
        _c(2, "Compact the buffer online with\n\n```\nkxctl  lattice compact --online\n```\n"),
    ]
    call = Question(id="q1", question="Which model estimates depth fastest?",
                    answer="torch.hub.load(repo_or_dir='intel-isl/MiDaS', model='MiDaS_small', pretrained=True)")
    # the retrieval hits rank the sibling record first: the oracle is still the one holding the call
    assert [c.chunk_id for c in _answer_oracle(call, [chunks[0], chunks[1]], chunks)] == ["c1"]
    assert [c.chunk_id for c in _answer_oracle(call, [], chunks)] == ["c1"]
    cmd = Question(id="q2", question="How do I compact the buffer while ingest runs?", answer="`kxctl lattice compact --online`")
    assert [c.chunk_id for c in _answer_oracle(cmd, [chunks[0]], chunks)] == ["c2"]
