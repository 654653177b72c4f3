"""Tuning the retriever: fine-tune the embedder on the RAFT rows, re-embed, measure recall.

Entry point: ``builder.retriever.run.run_train_retriever(ws, ...)`` (``raftsmith train-retriever``).
Modules: pairs (rows -> training pairs, eval queries), trainer (sentence-transformers), evaluate
(recall@k), switch (staged re-embedding, config edit), report (reports, export manifests).
"""

from __future__ import annotations
