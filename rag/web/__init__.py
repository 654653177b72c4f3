"""Web plumbing shared by raftsmith's local HTTP endpoints (``serve`` and the web page).

:mod:`rag.web.guard` is the request guard (Host, Origin, JSON-only writes, body cap, bearer
token) every endpoint wraps its ASGI app in. Starlette and uvicorn come with the ``rag`` extra.
"""

from rag.web.guard import GuardMiddleware, GuardPolicy, Rejection, error_body, scrub, serve_token

__all__ = ["GuardMiddleware", "GuardPolicy", "Rejection", "error_body", "scrub", "serve_token"]
