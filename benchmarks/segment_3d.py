"""Z-stacks as 3D objects: plane linking vs the 3D modes (`python benchmarks/segment_3d.py`).

Synthetic stacks (`core.synth3d`, exact 3D labels) at anisotropy 1, 2 and 4 (the same isotropic scene
sampled with a coarser Z step), several seeds; the bundled model, the same diameter for every method.
Methods: today's plane-by-plane segmentation linked by IoU > 0.3; `core.segment3d` with XY probabilities
only, and with XY + XZ + YZ views fused. 3D AP@0.5 (3D IoU), and time relative to plane by plane.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.segment3d import segment_3d_iter  # noqa: E402
from napari_unet.core.synth3d import synth_nuclei_3d  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--depth", type=int, default=48, help="isotropic depth of the scene, px")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--diameter", type=float, default=22.0)
    args = p.parse_args()
    model = load_model("bundled")
    print("| anisotropy | method | 3D AP@0.5 | objects (true / found) | s | x plane by plane |")
    print("|---:|---|---:|---:|---:|---:|")
    for a in (1, 2, 4):
        rows: dict[str, list] = {}
        for seed in range(args.seeds):
            img, lab = synth_nuclei_3d((int(args.depth / a), args.size, args.size), anisotropy=a, rng=seed)
            t = time.perf_counter()
            linked = segment(img, model, axes="ZYX", diameter=args.diameter, link_iou=0.3)
            base = time.perf_counter() - t
            rows.setdefault("planes linked (IoU > 0.3)", []).append((lab, linked, base, base))
            for fusion in ("xy", "xyz"):
                t = time.perf_counter()
                r = drain(segment_3d_iter(img, model, anisotropy=a, fusion=fusion, diameter=args.diameter))
                rows.setdefault(f"3D, {fusion} views", []).append((lab, r.labels, time.perf_counter() - t, base))
        for name, runs in rows.items():
            m = aggregate([match_instances(lab, pred) for lab, pred, _, _ in runs])
            secs = sum(r[2] for r in runs)
            ratio = secs / sum(r[3] for r in runs)
            print(f"| {a} | {name} | {m.ap:.3f} | {m.n_true} / {m.n_pred} | {secs:.1f} | {ratio:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
