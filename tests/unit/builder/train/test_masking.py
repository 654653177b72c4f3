"""Assistant-only loss: labels are -100 everywhere except the tokens the model must write.

The tokenizer is built here, offline, with the `tokenizers` library (byte-level BPE trained on
a few sentences, with each chat format's special tokens), and given a chat template: the real
SmolLM2 chatml template and real phi-3 / llama3 templates from Ollama's templates.jsonl.
"""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
from conftest import require_shared

from builder.families import CHAT_FORMATS
from builder.train.data import IGNORE, encode_row, encode_rows, make_renderer
from rag.errors import TrainingError

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<s>", "</s>",
           "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "[INST]", "[/INST]", "<|start|>", "<|message|>", "<|channel|>", "<|return|>", "<|pad|>"]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")



@lru_cache(maxsize=1)
def _backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Hello, how are you? I'm doing great.", "What is the default port of the Zorblax gateway?",
              "The port is 7431. Answer briefly.", "You are a helpful assistant.", "system user assistant"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()


def offline_tokenizer(chat_template: str, bos: str = "<s>", eos: str = "</s>"):
    """A transformers fast tokenizer built without any download, with ``chat_template``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_backend()),
                                  bos_token=bos, eos_token=eos, pad_token="<|pad|>")
    tok.chat_template = chat_template
    return tok


def _jsonl_template(fmt: str, line: int) -> str:
    testdata = require_shared() / "peer" / "ollama-templates" / "testdata"
    name, template = next(iter(json.loads((testdata / "templates.jsonl").read_text().splitlines()[line]).items()))
    assert name == fmt
    return template


def _row(system: bool = True) -> list[dict[str, str]]:
    msgs = [
        {"role": "user", "content": "What is the default port of the Zorblax gateway?"},
        {"role": "assistant", "content": "The port is 7431.\n<ANSWER>: 7431"},
        {"role": "user", "content": "Answer briefly: the port?"},
        {"role": "assistant", "content": "<ANSWER>: 7431"},
    ]
    return ([{"role": "system", "content": "You are a helpful assistant."}] if system else []) + msgs


def _labelled_text(tok, ids, labels) -> list[str]:
    """Decoded runs of consecutive labelled tokens."""
    runs, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_chatml_labels_only_assistant_turns():
    tok = offline_tokenizer(CHATML, bos="<|im_start|>", eos="<|im_end|>")
    ids, labels = encode_row(_row(), tok, CHAT_FORMATS["chatml"])
    runs = _labelled_text(tok, ids, labels)
    assert runs == ["The port is 7431.\n<ANSWER>: 7431<|im_end|>\n", "<ANSWER>: 7431<|im_end|>\n"]
    # nothing of the system prompt, the questions or the role headers is trained
    text = tok.decode(ids)
    assert "<|im_start|>assistant\n" in text
    n_labelled = sum(lab != IGNORE for lab in labels)
    assert 0 < n_labelled < len(ids) / 2


def test_phi3_labels_only_assistant_turns():
    tok = offline_tokenizer(_jsonl_template("phi-3", 29), bos="<s>", eos="<|endoftext|>")
    ids, labels = encode_row(_row(), tok, CHAT_FORMATS["phi-3"])
    runs = _labelled_text(tok, ids, labels)
    # this template closes a conversation with EOS: the last turn learns "<|end|>\n" + EOS
    assert runs == ["The port is 7431.\n<ANSWER>: 7431<|end|>\n", "<ANSWER>: 7431<|end|>\n<|endoftext|>"]
    assert tok.decode(ids).startswith("<s><|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\n")


def test_llama3_labels_only_assistant_turns():
    tok = offline_tokenizer(_jsonl_template("llama3-instruct", 22), bos="<|begin_of_text|>", eos="<|eot_id|>")
    ids, labels = encode_row(_row(), tok, CHAT_FORMATS["llama3-instruct"])
    runs = _labelled_text(tok, ids, labels)
    assert runs == ["The port is 7431.\n<ANSWER>: 7431<|eot_id|>", "<ANSWER>: 7431<|eot_id|>"]


def test_mistral_folds_system_into_first_user_turn():
    tok = offline_tokenizer(_jsonl_template("mistral-instruct", 10), bos="<s>", eos="</s>")
    ids, labels = encode_row(_row(), tok, CHAT_FORMATS["mistral-instruct"])
    text = tok.decode(ids)
    assert text.startswith("<s>[INST] You are a helpful assistant.\n\nWhat is the default port")
    assert _labelled_text(tok, ids, labels) == ["The port is 7431.\n<ANSWER>: 7431</s>", "<ANSWER>: 7431</s>"]


def test_harmony_labels_analysis_and_final():
    tok = offline_tokenizer(CHATML)  # the text comes from the Harmony renderer, not the template
    row = [{"role": "system", "content": "Be precise."}, {"role": "user", "content": "Which port?"},
           {"role": "assistant", "content": "The doc says 7431.\n<ANSWER>: 7431"}]
    ids, labels = encode_row(row, tok, CHAT_FORMATS["harmony"])
    runs = _labelled_text(tok, ids, labels)
    assert runs == ["<|channel|>analysis<|message|>The doc says 7431.<|end|><|start|>assistant"
                    "<|channel|>final<|message|><ANSWER>: 7431<|return|>"]


def test_template_that_is_not_prefix_stable_falls_back_to_search():
    # The system prompt moves to the LAST user turn (like Mistral v0.3): prefixes differ.
    moving = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% if loop.last %}SYS {% endif %}"
              "{{ m['content'] }}[/INST]{% elif m['role'] == 'assistant' %} {{ m['content'] }}</s>{% endif %}"
              "{% endfor %}")
    tok = offline_tokenizer(moving)
    ids, labels = encode_row(_row(system=False), tok, CHAT_FORMATS["mistral-instruct"])
    runs = [r.strip() for r in _labelled_text(tok, ids, labels)]
    assert runs == ["The port is 7431.\n<ANSWER>: 7431</s>", "<ANSWER>: 7431</s>"]


def test_rows_longer_than_max_seq_len_are_dropped_not_truncated():
    tok = offline_tokenizer(CHATML, bos="<|im_start|>", eos="<|im_end|>")
    short = {"messages": _row()[:3]}
    long = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    enc = encode_rows([short, long], tok, CHAT_FORMATS["chatml"], max_seq_len=128)
    assert len(enc.input_ids) == 1 and enc.dropped_too_long == 1
    with pytest.raises(TrainingError, match="max_seq_len"):
        encode_rows([long], tok, CHAT_FORMATS["chatml"], max_seq_len=128)


def test_tokenizer_without_template_is_a_clear_error():
    tok = offline_tokenizer(CHATML)
    tok.chat_template = None
    with pytest.raises(TrainingError, match="chat template"):
        make_renderer(CHAT_FORMATS["chatml"], tok)
