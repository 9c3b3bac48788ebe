"""Z-stacks as 3D objects: plane linking vs the 3D modes (`python benchmarks/segment_3d.py`).

Synthetic stacks (`core.synth3d`, exact 3D labels) at anisotropy 1, 2 and 4 (the same isotropic scene
sampled with a coarser Z step), seeds 0.. (the seed threshold of `core.segment3d` was chosen on seeds
100 and 101); the bundled model, the same diameter for every method. Methods: today's plane-by-plane
segmentation linked by IoU > 0.3; `core.segment3d` with XY probabilities only, and with XY + XZ + YZ
views fused (the `mode="3d"` default). 3D AP@0.5 (3D IoU), time relative to plane by plane, and peak
memory of the process (ru_maxrss grows only, so each figure is the most any method needed so far).
`--cells3d` adds the real confocal stack of `../shared/data/cells3d` (bronze labels, 20 nuclei).
`--memory Z,SIDE` segments one synthetic Z x SIDE x SIDE stack in 3D in a fresh process per setting (one
block; columns of blocks through all of Z; the default blocks, cut in Z too; the default blocks with the stack
read lazily from a zarr array and the labels written to an OME-Zarr; plane by plane, linked, for the time ratio)
and reports its peak RSS beyond the loaded stack (VmHWM, reset after loading) and the 3D AP@0.5 of each against
the one-block labels.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.segment3d import segment_3d_iter  # noqa: E402
from napari_unet.core.synth3d import synth_nuclei_3d  # noqa: E402

CELLS3D = ROOT.parent / "shared" / "data" / "cells3d"


def _rows(stacks, model, a, diameter):
    rows: dict[str, list] = {}
    for img, lab in stacks:
        t = time.perf_counter()
        linked = segment(img, model, axes="ZYX", diameter=diameter, link_iou=0.3)
        base = time.perf_counter() - t
        rows.setdefault("planes linked (IoU > 0.3)", []).append((lab, linked, base, base))
        for fusion in ("xy", "xyz"):
            t = time.perf_counter()
            r = drain(segment_3d_iter(img, model, anisotropy=a, fusion=fusion, diameter=diameter))
            rows.setdefault(f"3D, {fusion} views", []).append((lab, r.labels, time.perf_counter() - t, base))
    return rows


def _print(a, rows):
    for name, runs in rows.items():
        m = aggregate([match_instances(lab, pred) for lab, pred, _, _ in runs])
        secs = sum(r[2] for r in runs)
        ratio = secs / sum(r[3] for r in runs)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {a} | {name} | {m.ap:.3f} | {m.n_true} / {m.n_pred} | {secs:.1f} | {ratio:.1f}x | {rss:.0f} |",
              flush=True)  # fmt: skip


_CHILD = """
import sys, time, numpy as np
sys.path.insert(0, {root!r})
from napari_unet.api import load_model, segment
from napari_unet.core.jobs import drain
from napari_unet.core.segment3d import segment_3d_iter
from napari_unet.core.synth3d import synth_nuclei_3d
m = load_model("bundled")
img, lab = synth_nuclei_3d(({z}, {side}, {side}), anisotropy=2, rng=0)
kind = {kind!r}
if kind == "zarr":  # the stack is read lazily from an OME-Zarr-like array, the labels written to an OME-Zarr
    import zarr
    src = zarr.open_array({npy!r} + ".in.zarr", mode="w", shape=img.shape, chunks=(1, *img.shape[1:]), dtype=img.dtype)
    src[:] = img
    del img, lab
    img = zarr.open_array({npy!r} + ".in.zarr", mode="r")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak: what segmenting needs beyond the stack
t = time.perf_counter()
if kind == "planes":
    out = segment(img, m, axes="ZYX", diameter=22, link_iou=0.3)
elif kind == "zarr":
    segment(img, m, axes="ZYX", diameter=22, mode="3d", anisotropy=2, output={npy!r} + ".zarr")
    out = zarr.open_group({npy!r} + ".zarr", mode="r")["labels/nuclei/0"][...]
else:
    out = drain(segment_3d_iter(img, m, anisotropy=2, fusion="xyz", diameter=22, block={block}, block_z={block_z!r})).labels
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(f"{{time.perf_counter() - t:.1f}} {{hwm / 1024:.0f}} {{len(np.unique(out)) - 1}}")
np.save({npy!r}, out)
"""


def memory(z: int, side: int) -> None:
    import tempfile

    import numpy as np

    from napari_unet.core.segment3d import BLOCK_3D, BLOCK_3D_Z

    print(
        f"\n3D objects of one {z}x{side}x{side} stack (anisotropy 2; stack {z * side * side * 2 / 2**20:.0f} MB uint16):"
    )
    print("| blocks | s | peak RSS MB (process, after loading) | objects | 3D AP@0.5 vs one block |")
    print("|---|---:|---:|---:|---:|")
    settings = {"one": ("3d", None, None), f"{BLOCK_3D} px, all of Z": ("3d", BLOCK_3D, None),
                f"{BLOCK_3D} px x {BLOCK_3D_Z} planes": ("3d", BLOCK_3D, BLOCK_3D_Z),
                f"{BLOCK_3D} px, planes by the voxel budget (default)": ("3d", BLOCK_3D, "auto"),
                "default blocks, stack read from a zarr array, labels to an OME-Zarr": ("zarr", None, None),
                "plane by plane, planes linked (IoU > 0.3), for the time": ("planes", None, None)}  # fmt: skip
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (kind, block, block_z)) in enumerate(settings.items()):
            npy = str(Path(tmp) / f"{i}.npy")
            child = _CHILD.format(root=str(ROOT), z=z, side=side, kind=kind, block=block, block_z=block_z, npy=npy)
            out = subprocess.run(
                [sys.executable, "-c", child], capture_output=True, text=True, check=True
            ).stdout.split()
            labels = np.load(npy)
            ref = labels if ref is None else ref
            ap = match_instances(ref, labels).ap
            print(f"| {name} | {out[0]} | {out[1]} | {out[2]} | {ap:.3f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--depth", type=int, default=48, help="isotropic depth of the scene, px")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--diameter", type=float, default=22.0)
    p.add_argument("--cells3d", action="store_true", help="also the real cells3d stack (bronze labels)")
    p.add_argument("--memory", help="Z,SIDE: peak memory of one stack, one block against the default blocks")
    args = p.parse_args()
    if args.memory:
        memory(*(int(v) for v in args.memory.split(",")))
        return
    model = load_model("bundled")
    print("| anisotropy | method | 3D AP@0.5 | objects (true / found) | s | x plane by plane | peak RSS MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for a in (1, 2, 4):
        stacks = [synth_nuclei_3d((int(args.depth / a), args.size, args.size), anisotropy=a, rng=seed)
                  for seed in range(args.seeds)]  # fmt: skip
        _print(a, _rows(stacks, model, a, args.diameter))
    if args.cells3d:
        img, lab = tifffile.imread(CELLS3D / "nuclei.tif"), tifffile.imread(CELLS3D / "nuclei_label.tif")
        # voxel 0.29 x 0.26 x 0.26 um: anisotropy 1.1; diameter estimated by each method
        rows = {}
        t = time.perf_counter()
        linked = segment(img, model, axes="ZYX", link_iou=0.3)
        base = time.perf_counter() - t
        rows["cells3d: planes linked"] = [(lab, linked, base, base)]
        t = time.perf_counter()
        r = drain(segment_3d_iter(img, model, anisotropy=0.29 / 0.26, fusion="xyz"))
        rows["cells3d: 3D, xyz views"] = [(lab, r.labels, time.perf_counter() - t, base)]
        _print(1.1, rows)


if __name__ == "__main__":
    main()
