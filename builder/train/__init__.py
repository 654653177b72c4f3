"""LoRA / QLoRA training of the student model (registry-driven; see builder.families).

Entry point: ``builder.train.run.run_train(ws, ...)``.
"""

from __future__ import annotations
