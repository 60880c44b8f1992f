"""``python -m uca_kernels.info``: what was built and which backends can run here."""

from __future__ import annotations

import torch

from . import _ext, dispatch


def report() -> str:
    lines = [
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
        f"CUDA available: {torch.cuda.is_available()}",
        f"extension uca_kernels._C: {'loaded' if _ext.module() is not None else 'NOT loaded: ' + str(_ext.load_error())}"
        + (f", built with CUDA: {_ext.built_with_cuda()}" if _ext.module() is not None else ""),
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        lines.append(f"backends for {dev} float32 tensors (auto picks the first usable in {dispatch.PRIORITY}):")
        for name, reasons in dispatch.usable_backends(dev).items():
            lines.append(f"  {name:10s} {'usable' if not reasons else 'unusable: ' + '; '.join(reasons)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
