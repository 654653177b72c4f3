"""A chat template the Jinja sandbox blocks is an IntegrityError naming the model, not a crash.

The template is rendered by llama-cpp-python's own Jinja2ChatFormatter (the real sandbox);
no model is loaded here (tests/integration/rag/test_chat_template_sandbox.py loads one).
"""

from __future__ import annotations

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from rag.errors import IntegrityError, RaftsmithError
from rag.llm.llama_cpp_backend import chat_template_guard

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # reach Python internals
    "{% set x = [] %}{{ x.append(1) }}",  # mutate (the immutable sandbox)
    "{{ cycler.__init__.__globals__.os.system('id') }}",
])
def test_sandboxed_template_is_an_integrity_error(template: str) -> None:
    fmt = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
    expected = r"chat template inside evil\.gguf .*sandbox forbids"
    with pytest.raises(IntegrityError, match=expected) as err, chat_template_guard("evil.gguf"):
        fmt(messages=MESSAGES)  # type: ignore[arg-type]
    assert isinstance(err.value, RaftsmithError)  # the CLI prints it as an error, not "This is a bug"


def test_other_errors_and_good_templates_pass_through() -> None:
    good = Jinja2ChatFormatter(template="{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
                               eos_token="", bos_token="")
    with chat_template_guard("ok.gguf"):
        assert good(messages=MESSAGES).prompt == "<user>hi"  # type: ignore[arg-type]
    with pytest.raises(ZeroDivisionError), chat_template_guard("ok.gguf"):
        1 / 0  # noqa: B018 - not a template problem: not relabelled
