"""Size-estimate contract: every real image, rescaled 0.33x-3x, estimated within +-20 % of the truth.

Usage::

    python benchmarks/size_estimate.py [--model PATH] [--every 1] [--factors 0.33,0.5,...] [--previous]

For every real labelled image in `../shared/data` (mnfinder train + val, BBBC007, and the in-focus
planes 20, 30 and 40 of cells3d) and every factor, the image is rescaled (anti-aliased) and the
automatic estimate (`napari_unet.core.segment.estimate_diameter`) is compared with the labels'
median diameter x factor. `--previous` also runs the estimate that shipped before (a classical guess
refined by up to two passes of the model), side by side. Prints one table row per data set and factor.

`--crops` instead takes three random crops of each image, 192^2 at 1x and 448^2 at 2.5x (a field with a few
nuclei, or one large one), and reports the estimate against the whole image's median diameter x factor and
the mean AP@0.5 per crop of `segment` with the estimated diameter next to that with the true one given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.filters import gaussian, threshold_otsu

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.appearance import rescale  # noqa: E402
from napari_unet.core.instances import labels_from_probabilities, median_diameter, min_object_size  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import match_instances  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, predict_plane  # noqa: E402
from napari_unet.core.segment import estimate_diameter  # noqa: E402

FACTORS = (0.33, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def real_images(root: Path, every: int = 1):
    """(set name, image, labels) for every real labelled 2D image (every `every`-th)."""
    items = []
    for split in ("train", "val"):
        d = root / "mnfinder" / split
        for f in sorted((d / "images").glob("*.tif")):
            items.append(("mnfinder", tifffile.imread(f), tifffile.imread(d / "nuclei" / f.name)))
    for f in sorted((root / "bbbc007").glob("*.tif")):
        if not f.stem.endswith("_labels"):
            items.append(("bbbc007", tifffile.imread(f), tifffile.imread(f.with_name(f.stem + "_labels.tif"))))
    stack = tifffile.imread(root / "cells3d" / "nuclei.tif")
    lab3 = tifffile.imread(root / "cells3d" / "nuclei_label.tif")
    for z in (20, 30, 40):
        items.append(("cells3d", stack[z], lab3[z]))
    return items[::every]


def classical_diameter(plane: np.ndarray) -> float | None:
    """Rough object diameter from an Otsu mask: median over components of 2 x max inscribed radius.

    The largest inscribed circle of a clump of touching nuclei is about one nucleus wide, so this is
    insensitive to clumping; it only seeds the model-based estimate.
    """
    sm = gaussian(plane, 1.0)
    if not np.isfinite(sm).all() or np.ptp(sm) < 1e-6:
        return None
    mask = sm > threshold_otsu(sm)
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    dist = ndi.distance_transform_edt(mask)
    radii = ndi.maximum(dist, lab, np.arange(1, n + 1))
    areas = ndi.sum(mask, lab, np.arange(1, n + 1))
    radii = np.asarray(radii)[np.asarray(areas) >= 12]
    return float(2 * np.median(radii)) if radii.size else None


def previous_estimate(infer, plane, info, crop=768):
    """The estimate that shipped with v1: classical guess, refined by up to two model passes."""
    model_diameter = info.diameter
    H, W = plane.shape
    y0, x0 = max(0, (H - crop) // 2), max(0, (W - crop) // 2)
    sub = plane[y0 : y0 + crop, x0 : x0 + crop]
    guess = float(np.clip(classical_diameter(sub) or model_diameter, 4, 400))
    for _ in range(2):
        probs = drain(predict_plane(infer, sub, scale=model_diameter / guess))
        found = median_diameter(labels_from_probabilities(probs, min_size=min_object_size(guess)))
        if found is None:
            break
        converged = abs(np.log(found / guess)) < np.log(1.15)
        guess = float(np.clip(found, 4, 400))
        if converged:
            break
    return guess


def crops_table(model, items) -> None:
    """Estimates and AP on small crops: few nuclei in view (see the module docstring)."""
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for k, (name, image, labels) in enumerate(items):
        true = median_diameter(labels.astype(np.int32))
        group = f"{name} train" if name == "mnfinder" and k < 30 else name
        for f, side in ((1.0, 192), (2.5, 448)):
            img, lab = rescale(image, labels.astype(np.int32), f) if f != 1 else (image, labels.astype(np.int32))
            H, W = lab.shape
            rng = np.random.default_rng(k)
            for _ in range(3):
                if H <= side or W <= side:
                    break
                y, x = rng.integers(0, H - side), rng.integers(0, W - side)
                crop, truth = img[y : y + side, x : x + side], lab[y : y + side, x : x + side]
                if truth.max() == 0:
                    continue
                res = segment(crop, model, return_result=True)
                given = segment(crop, model, diameter=true * f)
                rows.setdefault((group, f"{side}^2 at {f:g}x"), []).append(
                    (res.diameter / (true * f), match_instances(truth, res.labels, 0.5).ap,
                     match_instances(truth, given, 0.5).ap)
                )  # fmt: skip
    print("| set | crops | n | estimate within +-20 % | off by > 1.5x | mean AP, estimated | mean AP, true diameter |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (group, kind), v in rows.items():
        r, ap_est, ap_true = np.asarray(v).T
        off = np.abs(np.log(r))
        print(f"| {group} | {kind} | {r.size} | {np.mean(off <= np.log(1.2)):.0%} | {np.mean(off > np.log(1.5)):.0%} |"
              f" {ap_est.mean():.3f} | {ap_true.mean():.3f} |")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--model", default="bundled")
    p.add_argument("--every", type=int, default=1, help="use every N-th image")
    p.add_argument("--factors", default=",".join(map(str, FACTORS)))
    p.add_argument("--previous", action="store_true", help="also run v1's estimate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crops", action="store_true", help="small crops (few nuclei in view) instead of whole images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.crops:
        crops_table(model, real_images(args.data, args.every))
        return 0
    infer = InferenceModel.prepare(model, torch.device("cpu"))
    factors = [float(f) for f in args.factors.split(",")]
    methods = {"multi-scale": estimate_diameter}
    if args.previous:
        methods["previous"] = previous_estimate
    rows: dict[tuple[str, str, float], list[float]] = {}
    times: dict[str, float] = dict.fromkeys(methods, 0.0)
    for name, image, labels in real_images(args.data, args.every):
        true = median_diameter(labels.astype(np.int32))
        for f in factors:
            img, _ = rescale(image, labels, f) if f != 1 else (image.astype(np.float32), labels)
            lo, hi = percentile_range(img)
            plane = normalize_plane(img, lo, hi)
            for m, fn in methods.items():
                t = time.perf_counter()
                est = fn(infer, plane, model.info)
                times[m] += time.perf_counter() - t
                rows.setdefault((m, name, f), []).append(est / (true * f))
    print(f"model {args.model}; ratio = estimate / (true median diameter x factor); target: all within 0.8-1.2\n")
    print("| estimate | set | factor | images | within +-20 % | median ratio | worst ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (m, name, f), r in rows.items():
        r = np.asarray(r)
        ok = np.mean(np.abs(np.log(r)) <= np.log(1.2))
        worst = r[np.argmax(np.abs(np.log(r)))]
        print(f"| {m} | {name} | {f:g} | {r.size} | {ok:.0%} | {np.median(r):.2f} | {worst:.2f} |")
    for m in methods:
        total = np.concatenate([v for (mm, _, _), v in rows.items() if mm == m])
        ok = np.mean(np.abs(np.log(total)) <= np.log(1.2))
        print(f"\n{m}: {ok:.1%} of {total.size} estimates within +-20 %, {times[m] / total.size:.2f} s each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
