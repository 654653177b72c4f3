"""``raftsmith ui``: a local web page over the answering engine (chat, arena, status, report).

:mod:`~rag.ui.app` is the Starlette app, :mod:`~rag.ui.security` its request checks,
:mod:`~rag.ui.server` binds and runs it (loopback by default), :mod:`~rag.ui.status`,
:mod:`~rag.ui.report` and :mod:`~rag.ui.sources` read what the views show from the workspace.
The page's HTML, JS and CSS ship in ``templates/`` and ``static/``.
"""

from __future__ import annotations

from rag.ui.server import UiServer, make_ui_server

__all__ = ["UiServer", "make_ui_server"]
