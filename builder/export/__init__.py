"""GGUF export: merge, llama.cpp conversion and quantization, adapter GGUF, Modelfiles, verify.

Entry point: ``builder.export.run.run_export(ws, ...)``.
"""

from __future__ import annotations
