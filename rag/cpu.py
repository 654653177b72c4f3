"""What this CPU can do, checked safely once per process (shared by embedding and training)."""

from __future__ import annotations

import re
import subprocess
import sys

_CPU_BF16: bool | None = None
_BF16_CHECK = (
    "import torch; a = torch.randn(64, 64, dtype=torch.bfloat16); "
    "assert torch.isfinite((a @ a).float()).all()"
)


def cpu_bf16_works() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX-BF16 listed, and a bf16 matmul runs).

    The matmul runs in a child process: a CPU that lists an instruction its VM faults on kills
    the child, not the caller. Checked once per process.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        _CPU_BF16 = False
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                flags = fh.read()
        except OSError:
            flags = ""
        if re.search(r"\b(avx512_bf16|amx_bf16)\b", flags):
            try:
                _CPU_BF16 = subprocess.run([sys.executable, "-c", _BF16_CHECK], capture_output=True,
                                           timeout=120).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _CPU_BF16 = False
    return _CPU_BF16
