"""The network's probabilities back to the plane's size: the float bilinear path against Pillow's uint8 one.

Usage::

    python benchmarks/probabilities_back.py [--size 2048] [--repeats 3]

A real canvas (mnfinder val, mirror-tiled; `segment_speed.real_canvas`) segmented end to end at its estimated
diameter, so the plane is made smaller for the network and its probabilities enlarged back
(`tiling.enlarge_window_uint8`), alternately with the float path it replaced (`tiling.resample_window`, rounded),
in one process. Prints the median seconds of each, their ratio and how far the labels of the two agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from segment_speed import real_canvas  # noqa: E402

import napari_unet  # noqa: E402
import napari_unet.core.predict as predict  # noqa: E402
from napari_unet.core.metrics import match_instances  # noqa: E402
from napari_unet.core.tiling import resample_window  # noqa: E402


def float_path(read, in_shape, out_shape, window) -> np.ndarray:
    return np.clip(resample_window(read, in_shape, out_shape, window) + 0.5, 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = napari_unet.load_model("bundled")
    img = real_canvas((args.size, args.size))
    d = napari_unet.segment(img, net, return_result=True).diameter
    ways = {"float path (before)": float_path, "Pillow uint8 (after)": predict.enlarge_window_uint8}
    times: dict[str, list[float]] = {k: [] for k in ways}
    labels = {}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            predict.enlarge_window_uint8 = fn
            t = time.perf_counter()
            labels[name] = napari_unet.segment(img, net, diameter=d)
            times[name].append(time.perf_counter() - t)
    before, after = (float(np.median(v)) for v in times.values())
    a, b = labels.values()
    print(
        f"{args.size}^2 real canvas, diameter {d:.1f} px (the model's {net.info.diameter:g} px), {args.threads} threads\n"
    )
    print("| back to the plane's size | end to end s (median) | runs |")
    print("|---|---:|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(
        f"\nratio {before / after:.2f}x; objects {a.max()} / {b.max()}, AP@0.5 of one against the other "
        f"{match_instances(a, b).ap:.4f}, pixels whose object/background differs {np.mean((a > 0) != (b > 0)):.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
