"""Resource report of the CUDA kernels: registers, shared memory, spills and stack per kernel and
architecture, from ``nvcc -Xptxas -v`` on the torch-free sources: the fully fused tile kernels
(csrc/cuda/contrast_cuda.cu) and the chunked path's epilogue kernels (csrc/cuda/chunked_cuda.cu).

    python benchmarks/ptxas_report.py                        # -> benchmarks/results/ptxas-cuda.md
    python benchmarks/ptxas_report.py --arch 80 90 --out report.md

No GPU needed. Exits 1 when nvcc is missing or the compile fails; prints the table either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "contrast_cuda.cu"  # tile kernels (and the shared-memory probe)
CHUNKED_SOURCE = ROOT / "csrc" / "cuda" / "chunked_cuda.cu"  # chunked path epilogues
KINDS = {"0": "mma16", "1": "tf32", "2": "fma"}


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


LOSS_NAMES = {"0": "sdm", "1": "infonce", "2": "sigmoid"}  # uca::cuda::Loss in csrc/cuda/contrast_cuda.h


DTYPES = {"__half": "f16", "__nv_bfloat16": "bf16", "float": "f32", "double": "f64"}
TILE_MODES = {"0": "sigmoid-fwd", "1": "bwd", "2": "sigmoid-scalar"}  # uca::cuda::chunked::TileMode


def chunked_name(name: str) -> str | None:
    """'uca::cuda::chunked::(anonymous namespace)::tile_kernel<float, __half, (uca::cuda::Loss)0,
    (uca::cuda::chunked::TileMode)1>(...)' -> 'chunk tile f32 f16 sdm bwd'; None if not a chunked kernel."""
    m = re.search(r"chunked::(?:\(anonymous namespace\)::)?(\w+)_kernel<([^>]*)>", name)
    if not m:
        return None
    kernel, targs = m.groups()
    parts = []
    for arg in (a.strip() for a in targs.split(",")):
        if arg in DTYPES:
            parts.append(DTYPES[arg])
        elif (lm := re.fullmatch(r"\(uca::cuda::Loss\)(\d)", arg)):
            parts.append(LOSS_NAMES.get(lm.group(1), arg))
        elif (tm := re.fullmatch(r"\(uca::cuda::chunked::TileMode\)(\d)", arg)):
            parts.append(TILE_MODES.get(tm.group(1), arg))
        else:
            parts.append(arg)
    return " ".join(["chunk", kernel, *parts])


def short_name(mangled: str) -> str:
    """'fwd_kernel<float, 2, false, (uca::cuda::Loss)0>' -> 'fwd f32 fma rows sdm' (demangled with c++filt);
    chunked kernels as chunked_name."""
    name = mangled
    if shutil.which("c++filt"):
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    chunked = chunked_name(name)
    if chunked is not None:
        return chunked
    m = re.search(r"(fwd|bwd)_kernel<([^,]+), \(?(?:uca::cuda::\(anonymous namespace\)::)?(\w+)\)?, (true|false), \(uca::cuda::Loss\)(\d)>",
                  name)
    if not m:
        return name
    kind, dtype, k, columns, loss = m.groups()
    k = KINDS.get(k, k.lower())
    dtype = DTYPES.get(dtype, dtype)
    return f"{kind} {dtype} {k} {'cols' if columns == 'true' else 'rows'} {LOSS_NAMES.get(loss, loss)}"


def parse(log: str) -> list[dict]:
    """Rows (kernel, arch, registers, smem, spill bytes, stack bytes) from ptxas -v output."""
    rows, cur = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if m:
            cur = {"kernel": short_name(m.group(1)), "arch": m.group(2), "stack": 0, "spill": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", line)
        if m:
            cur["registers"], cur["smem"] = int(m.group(1)), int(m.group(2) or 0)
    return [r for r in rows if "registers" in r]


SMEM_PROBE = r"""
#include <cstdio>
#include "cuda/contrast_cuda.h"
int main() {
  using namespace uca::cuda;
  std::printf("f16 %zu\nbf16 %zu\nf32-tf32 %zu\nf32-fma %zu\nf64-fma %zu\n",
              shared_bytes(DType::F16, Precision::IEEE), shared_bytes(DType::BF16, Precision::IEEE),
              shared_bytes(DType::F32, Precision::TF32), shared_bytes(DType::F32, Precision::IEEE),
              shared_bytes(DType::F64, Precision::IEEE));
}
"""


def dynamic_shared_bytes(nvcc: str, kernels_obj: str) -> dict[str, int]:
    """Bytes of dynamic shared memory per block for each dtype/path, from a host program linked
    with the compiled kernels (it makes no CUDA call, so it runs without a GPU)."""
    tmp = os.path.dirname(kernels_obj)
    probe, exe = os.path.join(tmp, "probe.cu"), os.path.join(tmp, "probe")
    Path(probe).write_text(SMEM_PROBE)
    build = subprocess.run([nvcc, "-std=c++17", f"-I{ROOT / 'csrc'}", probe, kernels_obj, "-o", exe],
                           capture_output=True, text=True)
    if build.returncode != 0:
        print(build.stdout + build.stderr, file=sys.stderr)
        return {}
    out = subprocess.run([exe], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    return {k: int(v) for k, v in (line.split() for line in out.stdout.splitlines() if line.strip())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["80", "90"], help="compute capabilities (default 80 90)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ptxas-cuda.md")
    args = ap.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (PATH or $CUDA_HOME/bin)", file=sys.stderr)
        return 1
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in args.arch]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", str(SOURCE), "-o", os.path.join(tmp, "k.o"), "-O3", "-std=c++17", "-Xptxas=-v",
               f"-I{ROOT / 'csrc'}", *gencode]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        smem = dynamic_shared_bytes(nvcc, cmd[4]) if proc.returncode == 0 else {}
        chunked_cmd = [nvcc, "-c", str(CHUNKED_SOURCE), "-o", os.path.join(tmp, "c.o"), *cmd[5:]]
        chunked = subprocess.run(chunked_cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr + chunked.stdout + chunked.stderr
    if proc.returncode != 0 or chunked.returncode != 0:
        print(log, file=sys.stderr)
        return 1
    rows = sorted(parse(log), key=lambda r: (r["arch"], r["kernel"]))
    shown = ["nvcc", "-c", f"{SOURCE.relative_to(ROOT)} (and {CHUNKED_SOURCE.relative_to(ROOT)})", *cmd[5:8], "-Icsrc",
             *gencode]  # as run, paths relative
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    lines = [
        "# ptxas resources of the CUDA kernels",
        "",
        f"`{' '.join(shown)}` ({version}), "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}. Tile kernels: pass, feature dtype, "
        "product path (mma16 = fp16/bf16 tensor cores, tf32 = TF32 tensor cores, fma = exact FMA), owner side, loss. "
        "Chunked path (`chunk ...`): kernel, accumulation dtype, then (tile) the dtype of the rounded dT copy (the accumulation dtype where there is none), loss and mode; "
        "their shared memory is static (the smem column). "
        "The tile kernels' shared memory is dynamic, so ptxas reports 0 static bytes; the dynamic bytes per block "
        "(the same for every kernel of a dtype and path, from `uca::cuda::shared_bytes`): "
        + (", ".join(f"{k} {v}" for k, v in smem.items()) if smem else "not available (host program failed)") + ".",
        "",
        "| kernel | arch | registers | smem | spill bytes | stack bytes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| `{r['kernel']}` | {r['arch']} | {r['registers']} | {r['smem']} | {r['spill']} | {r['stack']} |"
              for r in rows]
    spilling = [r for r in rows if r["spill"] or r["stack"]]
    lines += ["", f"{len(rows)} kernels; {len(spilling)} with spills or stack."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
