"""Builds uca_kernels._C: C++17 + OpenMP CPU kernels always, CUDA kernels when asked or possible.

    pip install --no-build-isolation .        # or -e . for development

Environment:
    UCA_BUILD_CUDA=1|0      force CUDA sources on/off (default: on when nvcc is found and torch
                            is a CUDA build)
    TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0" when no GPU is visible)
    CUDA_HOME               CUDA toolkit (default /usr/local/cuda when it exists)
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCES = ["csrc/bindings.cpp", *sorted(glob.glob("csrc/core/*.cpp", root_dir=ROOT))]
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT)) + sorted(glob.glob("csrc/cuda/*.cpp", root_dir=ROOT))


def _want_cuda(torch) -> bool:
    flag = os.environ.get("UCA_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if not CUDA_SOURCES:
        if flag in ("1", "true", "yes", "on"):
            print("UCA_BUILD_CUDA=1 but there are no CUDA sources under csrc/cuda/: building CPU only", file=sys.stderr)
        return False
    if flag in ("1", "true", "yes", "on"):
        if torch.version.cuda is None:
            sys.exit("UCA_BUILD_CUDA=1 needs a CUDA build of torch (torch.version.cuda is None)")
        return True
    return torch.version.cuda is not None and (shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc"))


def _prepare_cuda_env(torch) -> None:
    """The traps of building without a visible GPU (docs/design.md, "Building the extension");
    CUDA_HOME is set in extensions(), before torch's cpp_extension is imported."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    # The pip CUDA build of torch ships the CUDA headers it needs in the nvidia wheels.
    site = os.path.dirname(os.path.dirname(torch.__file__))
    extra = [p for p in glob.glob(os.path.join(site, "nvidia", "cu*", "include")) if os.path.isdir(p)]
    if extra:
        os.environ["CPATH"] = os.pathsep.join(extra + [os.environ.get("CPATH", "")]).rstrip(os.pathsep)


def extensions():
    # CUDA_HOME first: torch.utils.cpp_extension reads it once, on import (without it, it guesses
    # from `which nvcc`, and /usr/local/bin/nvcc is a wrapper: it would pick /usr/local).
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # No -std: torch picks the standard its headers need (C++20 for torch >= 2.13); the torch-free
    # core stays C++17 (CMakeLists.txt builds it so).
    # -fno-trapping-math: lets GCC if-convert (and so vectorise) the epilogue loops; no FP traps are used
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if _want_cuda(torch):
        _prepare_cuda_env(torch)
        # no --use_fast_math: the kernels use accurate expf/logf and fixed-rounding adds
        nvcc = ["-O3", "-lineinfo", "-Xptxas=-v"]
        ext = CUDAExtension(
            "uca_kernels._C",
            CPU_SOURCES + CUDA_SOURCES,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("UCA_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "uca_kernels._C",
            CPU_SOURCES,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
