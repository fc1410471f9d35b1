#!/usr/bin/env python3
"""Assembles every committed PTX file with ptxas for each target GPU and reports the
registers of every kernel; fails on an assembler error or on any register spill.

ptxas comes from the PyPI wheel `nvidia-cuda-nvcc-cu12` (requirements.txt).

    python3 kernels/check_ptxas.py            # sm_80 and sm_90
"""

import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["sm_80", "sm_90"]


def find_ptxas():
    import nvidia.cuda_nvcc  # noqa: F401  (the wheel's package)

    base = os.path.dirname(nvidia.cuda_nvcc.__file__)
    path = os.path.join(base, "bin", "ptxas")
    if not os.path.exists(path):
        sys.exit(f"no ptxas in {base}/bin")
    return path


def main():
    ptxas = find_ptxas()
    files = sorted(glob.glob(os.path.join(HERE, "ptx", "*.ptx")))
    if not files:
        sys.exit("no PTX in kernels/ptx; run kernels/build_ptx.py")
    failures = []
    for target in TARGETS:
        for path in files:
            run = subprocess.run(
                [ptxas, "-v", f"-arch={target}", "-o", os.devnull, path],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                failures.append(f"{os.path.basename(path)} {target}: ptxas failed\n{run.stderr}")
                continue
            kernel = None
            for line in run.stderr.splitlines():
                m = re.search(r"Compiling entry function '(\w+)'", line)
                if m:
                    kernel = m.group(1)
                m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
                if m and (int(m.group(1)) or int(m.group(2))):
                    failures.append(f"{kernel} {target}: {line.strip()}")
                m = re.search(r"Used (\d+) registers", line)
                if m:
                    print(f"{target} {kernel:28} {m.group(1):>4} registers")
    if failures:
        sys.exit("ptxas check failed:\n" + "\n".join(failures))
    print(f"ptxas: {len(files)} PTX files assembled for {', '.join(TARGETS)}, no spills")


if __name__ == "__main__":
    main()
