"""Bundled model v1 against v2, end to end, side by side in one run: time per megapixel.

    python benchmarks/v2_speed.py [--repeats 3] [--threads 2]

Each method segments the same real images (the 3 mnfinder val images, 768x869, and a 2048x2048
mosaic of them) with the diameter estimated automatically, as a user's first click does:
  * v1: v1's weights and v1's size estimate (a classical guess refined by up to two model passes);
  * v2: the bundled model now and the multi-scale estimate;
  * v2 + TTA: the same with test-time augmentation (four flips);
  * v2, outlines untrimmed: v2 without the trim of each object's dim rim (`instances.refine_outlines`).
Times are the median of `--repeats` runs; the ratio is against v1 (target: v2 <= 1.3x).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from size_estimate import previous_estimate  # noqa: E402

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.device import describe  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                extra = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags]
                return f"{name} ({', '.join(extra) or 'no AVX-512/bf16'})"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    val = sorted((DATA / "mnfinder" / "val" / "images").glob("*.tif"))
    images = [tifffile.imread(f) for f in val]
    tile = np.concatenate([im[:512, :512].astype(np.uint16) for im in images[:2]] * 2, axis=1)[:, :2048]
    mosaic = np.concatenate([tile] * 4, axis=0)[:2048]
    sets = {"3 x 768x869": images, "2048x2048": [mosaic]}
    v1 = load_model(str(ROOT / "recipes" / "bundled_v1.safetensors"))
    v2 = load_model("bundled")
    v2_untrimmed = load_model("bundled")
    v2_untrimmed.info = replace(v2_untrimmed.info, outline_level=0.0)
    infer_v1 = InferenceModel.prepare(v1, torch.device("cpu"))

    def run_v1(image):
        lo, hi = percentile_range(image)
        d = previous_estimate(infer_v1, normalize_plane(image, lo, hi), v1.info)
        return segment(image, v1, diameter=d, device="cpu")

    methods = {
        "v1": run_v1,
        "v2": lambda im: segment(im, v2, device="cpu"),
        "v2 + TTA": lambda im: segment(im, v2, device="cpu", tta=True),
        "v2, outlines untrimmed": lambda im: segment(im, v2_untrimmed, device="cpu"),
    }
    print(f"{cpu_name()}, {args.threads} threads, {describe(torch.device('cpu'))}\n")
    print("| images | method | s / Mpx | x v1 |")
    print("|---|---|---:|---:|")
    for name, ims in sets.items():
        mpx = sum(im.size for im in ims) / 1e6
        base = None
        for m, fn in methods.items():
            for im in ims:  # warm-up
                fn(im)
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for im in ims:
                    fn(im)
                ts.append(time.perf_counter() - t)
            per = float(np.median(ts)) / mpx
            base = per if base is None else base
            print(f"| {name} | {m} | {per:.2f} | {per / base:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
