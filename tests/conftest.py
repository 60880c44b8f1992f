"""Test configuration shared by every test module.

Triton's CPU interpreter must be switched on before any ``@triton.jit`` runs, so it is set here,
first, when no CUDA device is present (GPU machines run the real kernels).
"""

import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
