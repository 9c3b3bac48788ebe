"""What glibc's allocator settings cost segmentation and fine-tuning (`python benchmarks/allocator.py`).

Each row runs in a fresh subprocess: segmenting a real-nuclei canvas (the mnfinder val image mirror-tiled,
diameter given, so no size estimate) with 1 and 2 torch threads, best of `--repeats`, its peak RSS beyond
the loaded input and model (VmHWM, reset after loading), and fine-tuning steps/s. The settings:

* glibc's default (dynamic mmap threshold, 128 kB trim threshold);
* what a dask worker gets: ``MALLOC_TRIM_THRESHOLD_=65536`` from the nanny, which also freezes the mmap
  threshold at 128 kB;
* either of these with `napari_unet.core.device.keep_freed_memory` (32 MB mmap / 256 MB trim thresholds),
  which segmentation and training now call once per process.

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
import numpy as np, torch
import napari_unet.core.predict as P, napari_unet.core.train as T
if not {tuned}:  # the setting under test is glibc's own (or dask's), not ours
    P.keep_freed_memory = T.keep_freed_memory = lambda: False
from napari_unet.api import load_model, segment, train
from segment_speed import real_canvas
size, repeats = {size}, {repeats}
img = real_canvas((size, size))
model = load_model("bundled")
def status(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))
out = {{}}
open("/proc/self/clear_refs", "w").write("5")  # the peak from here: what segmenting needs beyond the input
before = status("VmRSS:")
for threads in (1, 2):
    torch.set_num_threads(threads)
    segment(img[:512, :512], model, diameter=24.0)  # warm-up
    best = 1e9
    for _ in range(repeats):
        t = time.perf_counter()
        lab = segment(img, model, diameter=24.0)
        best = min(best, time.perf_counter() - t)
    out[f"s{{threads}}"] = best
    if threads == 2:
        out["peak_mb"] = (status("VmHWM:") - before) / 1024
        out["objects"] = int(lab.max())
crop = img[:768, :768]
rates = [ev.steps_per_s for ev in train(crop, lab[:768, :768], init=model, steps={steps}, diameter=24.0,
                                        save=False, seed=0) if getattr(ev, "step", 0) == {steps}]
out["steps_per_s"] = rates[-1]
print(json.dumps(out))
"""

SETTINGS = [
    ("glibc default", {}, False),
    ("glibc default + keep_freed_memory (now)", {}, True),
    ("dask worker (MALLOC_TRIM_THRESHOLD_=65536)", {"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
    ("dask worker + keep_freed_memory (now)", {"MALLOC_TRIM_THRESHOLD_": "65536"}, True),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="fine-tuning steps per row")
    args = p.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine())  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16"
    print(f"CPU: {cpu} ({bf16}), {os.cpu_count()} cores; {args.size}^2 real canvas, best of {args.repeats}\n")
    print("| allocator | segment, 1 thread (s) | segment, 2 threads (s) | x default (2 threads) | "
          "peak RSS beyond input (MB) | fine-tune steps/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for name, env, tuned in SETTINGS:
        code = CHILD.format(bench=str(ROOT / "benchmarks"), tuned=tuned, size=args.size,
                            repeats=args.repeats, steps=args.steps)  # fmt: skip
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={k: v for k, v in {**os.environ, **env}.items() if k != "MALLOC_MMAP_THRESHOLD_"})  # fmt: skip
        r = json.loads(run.stdout.strip().splitlines()[-1])
        base = base or r["s2"]
        print(f"| {name} | {r['s1']:.2f} | {r['s2']:.2f} | {base / r['s2']:.2f}x | {r['peak_mb']:.0f} | "
              f"{r['steps_per_s']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
