#!/usr/bin/env python3
"""Compiles the CUDA sources of this folder to PTX with NVRTC, without a CUDA toolkit.

NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc-cu12` (pinned in requirements.txt), found
through the installed `nvidia.cuda_nvrtc` package and called through ctypes. Output: one
`ptx/<name>.ptx` per `<name>.cu`, embedded by the library (src/cuda/module.rs).

    python3 kernels/build_ptx.py            # (re)write kernels/ptx/*.ptx
    python3 kernels/build_ptx.py --check    # fail if the committed PTX differs from a fresh build

The target is the virtual architecture compute_80 (Ampere and newer run it through the
driver's JIT); the wheel's version fixes the PTX ISA version and with it the oldest driver
that loads the PTX (NVRTC 12.4: PTX ISA 8.4, driver 550 or newer).
"""

import ctypes
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["step.cu", "persistent.cu", "gemm.cu"]
ARCH = "compute_80"
OPTIONS = [f"--gpu-architecture={ARCH}", "--std=c++17", f"--include-path={HERE}"]


def load_nvrtc():
    import nvidia.cuda_nvrtc  # noqa: F401  (the wheel's package)

    base = os.path.dirname(nvidia.cuda_nvrtc.__file__)
    libs = sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so*")))
    libs = [p for p in libs if "builtins" not in p]
    if not libs:
        sys.exit(f"no libnvrtc.so in {base}/lib")
    return ctypes.CDLL(libs[0])


def check(nvrtc, code, what, prog=None):
    if code == 0:
        return
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    msg = nvrtc.nvrtcGetErrorString(code).decode()
    log = ""
    if prog is not None:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
    sys.exit(f"{what}: {msg}\n{log}")


def compile_source(nvrtc, name):
    with open(os.path.join(HERE, name), "rb") as f:
        src = f.read()
    prog = ctypes.c_void_p()
    check(
        nvrtc,
        nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None),
        f"{name}: create",
    )
    opts = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
    check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(OPTIONS), opts), f"{name}: compile", prog)
    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), f"{name}: size")
    buf = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), f"{name}: ptx")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return buf.value.decode()


def main():
    check_only = "--check" in sys.argv[1:]
    nvrtc = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value}, {ARCH}")
    out_dir = os.path.join(HERE, "ptx")
    os.makedirs(out_dir, exist_ok=True)
    stale = []
    for name in SOURCES:
        ptx = compile_source(nvrtc, name)
        path = os.path.join(out_dir, name[:-3] + ".ptx")
        if check_only:
            try:
                with open(path) as f:
                    committed = f.read()
            except FileNotFoundError:
                committed = None
            if committed != ptx:
                stale.append(path)
            print(f"{name}: {len(ptx)} bytes, {'STALE' if committed != ptx else 'up to date'}")
        else:
            with open(path, "w") as f:
                f.write(ptx)
            print(f"{name}: {len(ptx)} bytes -> {os.path.relpath(path)}")
    if stale:
        sys.exit("committed PTX differs from the sources; run python3 kernels/build_ptx.py: " + ", ".join(stale))


if __name__ == "__main__":
    main()
