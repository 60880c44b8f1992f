"""Test configuration shared by every test module.

Triton's CPU interpreter must be switched on before any ``@triton.jit`` runs, so it is set here,
first, when no CUDA device is present (GPU machines run the real kernels).

The backends' self-test verdicts (``uca_kernels.selftest``) go to a folder that lives for this test
session, never to the user's cache: each session (and each process it spawns) self-tests the
backends ``auto`` picks once, as a fresh machine would.
"""

import os
import shutil
import tempfile

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

_SELFTEST_CACHE = tempfile.mkdtemp(prefix="uca-selftest-")
os.environ["UCA_SELFTEST_CACHE"] = _SELFTEST_CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_SELFTEST_CACHE, ignore_errors=True)
