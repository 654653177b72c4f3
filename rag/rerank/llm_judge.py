"""``chat.rerank: llm``: the local llama.cpp model judges each passage from its next-token logprobs.

For every (question, passage) pair the model reads a short relevance prompt in its own chat
template and the score is log P("Yes") - log P("No") for the first token of its reply (each
side summed over the spellings the tokenizer has: "Yes", " Yes", "yes", " yes"). No text is
generated, so one passage costs one prompt evaluation. The loaded model is the one the chat
uses when they are the same file (llama.cpp models are cached per file and context), and the
instruction before the passage is shared by all passages of a question, so its KV cache is
reused (:meth:`LlamaCppBackend.next_token_logits`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError
from rag.rerank.cross_encoder import passage_text
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.config import Workspace
    from rag.llm.llama_cpp_backend import LlamaCppBackend

SYSTEM = ("You judge search results. Given a question and a passage from the documentation, "
          "reply Yes if the passage contains the answer to the question, otherwise reply No.")
USER = "Question: {question}\n\nPassage:\n{passage}\n\nDoes this passage answer the question? Reply Yes or No."
YES = ("Yes", " Yes", "yes", " yes")
NO = ("No", " No", "no", " no")
#: characters of a passage the judge reads (about 200 SmolLM2 tokens): the cost is one prompt
#: evaluation per passage, linear in its length, and the head of a chunk says what it is about
MAX_PASSAGE_CHARS = 800


def _first_tokens(be: LlamaCppBackend, words: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for w in words:
        toks = be.tokenize(w)
        if toks and toks[0] not in ids:
            ids.append(toks[0])
    return ids


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class LlmReranker:
    """Relevance from a llama.cpp chat model's Yes/No logprobs."""

    name = "llm"

    def __init__(self, backend: LlamaCppBackend, model_label: str | None = None) -> None:
        self.backend = backend
        self.model_label = model_label or backend.model_label
        self._yes = _first_tokens(backend, YES)
        self._no = _first_tokens(backend, NO)
        if not self._yes or not self._no or set(self._yes) & set(self._no):
            raise ConfigError(f"The tokenizer of {self.model_label} cannot tell 'Yes' from 'No'; "
                              "use another chat.rerank_model or chat.rerank: off.")
        self._lock = threading.Lock()
        self.passages_scored = 0

    def prompt(self, question: str, chunk: Chunk) -> str:
        passage = passage_text(chunk)[:MAX_PASSAGE_CHARS]
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": USER.format(question=question.strip(), passage=passage)}]
        rendered = self.backend.render_prompt(msgs)
        if rendered is None:  # a GGUF without a chat template: plain text turns
            rendered = f"{SYSTEM}\n\n{msgs[1]['content']}\n\nAnswer:"
        return rendered

    def score(self, query: str, chunks: Sequence[Chunk]) -> list[float]:
        out: list[float] = []
        with self._lock:
            for c in chunks:
                logits: Any = self.backend.next_token_logits(self.prompt(query, c))
                yes = _logsumexp([float(logits[i]) for i in self._yes])
                no = _logsumexp([float(logits[i]) for i in self._no])
                out.append(yes - no)  # the softmax normaliser cancels: a log-odds of "Yes"
                self.passages_scored += 1
        return out


def load_llm_reranker(ws: Workspace, model: str = "base") -> LlmReranker:
    """The llm reranker on ``model`` ('base', 'tuned', an export name or a .gguf path), via llama.cpp."""
    from rag.llm.factory import make_backend
    from rag.llm.llama_cpp_backend import LlamaCppBackend
    from rag.llm.resolve import resolve_model

    ref = resolve_model(ws, model, "llama-cpp")
    be = make_backend(ws, ref)
    assert isinstance(be, LlamaCppBackend)
    return LlmReranker(be, f"{ref.label} (llama-cpp)")
