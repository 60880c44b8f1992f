"""``python -m uca_kernels.info``: what was built, which backends can run here, and their self-test
verdicts (the backends ``auto`` could pick get their verdict from the cache, or run the self-test
now: :mod:`uca_kernels.selftest`)."""

from __future__ import annotations

import sys

import torch

from . import _ext, dispatch, selftest


def report(run_selftests: bool = True) -> str:
    path = selftest.cache_path()
    lines = [
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), "
        f"CUDA available: {torch.cuda.is_available()}",
        f"extension uca_kernels._C: {'loaded' if _ext.module() is not None else 'NOT loaded: ' + str(_ext.load_error())}"
        + (f", built with CUDA: {_ext.built_with_cuda()}" if _ext.module() is not None else ""),
        f"self-tests: {'on' if selftest.enabled() else 'OFF (UCA_SELFTEST=0: auto trusts every backend)'}, "
        f"verdict cache: {path if path is not None else 'off (UCA_SELFTEST_CACHE)'}",
    ]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        lines.append(f"backends for {dev} float32 tensors (auto picks the first usable in {dispatch.PRIORITY}):")
        probe = torch.zeros(2, 2, device=dev)
        for name, reasons in dispatch.usable_backends(dev).items():
            impl = dispatch.get_backend(name)
            line = f"  {name:10s} {'usable' if not reasons else 'unusable: ' + '; '.join(reasons)}"
            if not reasons and impl.needs_selftest:
                auto_reasons = impl.not_supported_reasons(A=probe, B=probe, loss="sdm", exclude_self=False)
                if auto_reasons:
                    line += f"; auto does not pick it here ({'; '.join(auto_reasons)})"
                elif run_selftests:
                    v = selftest.verdict(name, dev, warn=False)
                    line += f"; self-test on {selftest.device_name(dev)}: {v.summary()}"
                else:
                    line += "; self-test not run (--no-selftest)"
            lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(report(run_selftests="--no-selftest" not in argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
