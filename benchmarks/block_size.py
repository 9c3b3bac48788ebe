"""Block size for planes held in memory: time, peak memory and agreement with the whole plane, side by side.

    python benchmarks/block_size.py [--sizes 1024,1536,2048,3000,4096] [--blocks none,768,1024,2048] [--repeats 2]

A plane larger than the block is segmented block by block, and on a CPU with more than one thread the
instance step of one block (single-threaded) runs while the network predicts the next (`jobs.overlapped`).
For real nuclei tiled from mnfinder/val (`segment_speed.real_canvas`, uint16, diameter 24 px as there), each
block size is timed end to end (`napari_unet.segment`, rounds alternating between the block sizes), its
labels are compared with the whole plane's (`none`: one block; AP@0.5, and the share of pixels whose
foreground/background differs), and its peak RSS beyond the input is measured in a child process that loads
the same image from a .npy file.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from segment_speed import real_canvas  # noqa: E402

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.metrics import average_precision  # noqa: E402

DIAMETER = 24.0

# The peak is VmHWM after a reset (/proc/self/clear_refs): ru_maxrss would carry the parent's peak over the fork.
CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r}); sys.path.insert(0, {root!r})
import numpy as np
from napari_unet.api import load_model, segment
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
model = load_model({model!r})
image = np.load({path!r})
segment(image[:256, :256], model, diameter={diameter})  # warm-up: libraries loaded
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
t = time.perf_counter()
labels = segment(image, model, diameter={diameter}, block={block})
print(json.dumps(dict(before_kb=before, peak_kb=status("VmHWM:"), seconds=time.perf_counter() - t,
                      objects=int(labels.max()))))
"""


def peak_memory(model: str, path: str, block: int | None) -> float:
    """Peak RSS beyond the model and the input, MB, of one `segment` call in a fresh process."""
    code = CHILD.format(bench=str(ROOT / "benchmarks"), root=str(ROOT), model=model, path=path,
                        diameter=DIAMETER, block=block)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    return (m["peak_kb"] - m["before_kb"]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--sizes", default="1024,1536,2048,3000,4096")
    p.add_argument("--blocks", default="none,768,1024,2048", help="block sizes (none: the plane as one block)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    blocks = [None if b == "none" else int(b) for b in args.blocks.split(",")]
    print(
        f"# block size: {platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}"
    )
    print(f"real nuclei tiled from mnfinder/val, uint16, diameter {DIAMETER} px; best of {args.repeats} rounds\n")
    print(
        "| plane | block | blocks | seconds | Mpx/s | vs block " + str(blocks[-1]) + " | AP@0.5 vs whole plane | "
        "pixels differing (fg/bg) | peak RSS beyond the input MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        image = real_canvas((size, size))
        path = str(Path(tempfile.mkdtemp()) / "plane.npy")
        np.save(path, image)
        whole = segment(image, model, diameter=DIAMETER, block=None)
        seconds = {b: [] for b in blocks}
        labels = {}
        for _ in range(args.repeats):
            for b in blocks:
                t = time.perf_counter()
                labels[b] = segment(image, model, diameter=DIAMETER, block=b)
                seconds[b].append(time.perf_counter() - t)
        base = min(seconds[blocks[-1]])
        for b in blocks:
            s = min(seconds[b])
            n = 1 if b is None else int(np.ceil(size / b)) ** 2
            ap = float(np.squeeze(average_precision(whole, labels[b], 0.5)))
            differ = float(((whole > 0) != (labels[b] > 0)).mean())
            mem = peak_memory(args.model, path, b)
            print(f"| {size}^2 | {b or 'none'} | {n} | {s:.2f} | {size * size / 1e6 / s:.2f} | {base / s:.2f}x | {ap:.4f} | "
                  f"{differ:.2e} | {mem:.0f} |", flush=True)  # fmt: skip
        shutil.rmtree(Path(path).parent)


if __name__ == "__main__":
    main()
