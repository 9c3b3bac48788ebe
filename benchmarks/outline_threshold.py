"""Where the outline sits: AP and matched IoU against the foreground threshold of the watershed mask.

    python benchmarks/outline_threshold.py [--model bundled] [--thresholds 0.3,0.4,0.5,0.6,0.7] [--seeds 0.5]
                                           [--levels 0,0.1,0.15,0.2]

Scored only on the selection sets (mnfinder val, gold; 8 synthetic validation images in the
training style, exact labels), never on the hard-case suite. Each image is predicted once at its
labels' median diameter; only the post-processing changes between columns. `area ratio` is the
median predicted / true area of matched objects (> 1: outlines outside the true edge). `--levels`
also trims each object's dim rim at each fixed level (`instances.refine_outlines`, without its choice of the
steepest level; 0: untrimmed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "recipes"))

from eval_accuracy import load_dataset  # noqa: E402
from train_bundled import wide_synth  # noqa: E402

from napari_unet.api import load_model  # noqa: E402
from napari_unet.core.instances import (  # noqa: E402
    labels_from_probabilities,
    median_diameter,
    min_object_size,
    refine_outlines,
)
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, predict_plane  # noqa: E402


def area_ratio(true, pred):
    ratios = []
    for t in np.unique(true)[1:]:
        m = true == t
        ids, counts = np.unique(pred[m], return_counts=True)
        keep = ids > 0
        if not keep.any():
            continue
        p = ids[keep][np.argmax(counts[keep])]
        inter = counts[keep].max()
        union = m.sum() + (pred == p).sum() - inter
        if inter / union > 0.5:
            ratios.append((pred == p).sum() / m.sum())
    return ratios


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7", help="mask (outline) thresholds")
    p.add_argument("--seeds", default="0.5", help="seed thresholds (interior probability that starts an object)")
    p.add_argument("--levels", default="0", help="outline levels of refine_outlines (0: no trim)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    infer = InferenceModel.prepare(model, torch.device("cpu"))
    sets = {
        "mnfinder val": [(s.image, s.labels.astype(np.int32), s.ignore) for s in load_dataset("mnfinder_val")],
        "synthetic val": [(im, lab, None) for im, lab in (wide_synth(900_000 + i) for i in range(8))],
    }
    ths = [
        (float(t), float(sd), float(lv))
        for lv in args.levels.split(",")
        for sd in args.seeds.split(",")
        for t in args.thresholds.split(",")
    ]
    print(f"model {args.model}\n")
    print(
        "| set | seed threshold | mask threshold | outline level | AP@0.5 | AP@0.75 | mean matched IoU | area ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, items in sets.items():
        probs = []
        for image, labels, _ in items:
            lo, hi = percentile_range(image)
            d = median_diameter(labels)
            plane = normalize_plane(image, lo, hi)
            probs.append((drain(predict_plane(infer, plane, scale=model.info.diameter / d)), d, plane))
        for t, sd, lv in ths:
            m50, m75, ratios = [], [], []
            for (pr, d, plane), (_, labels, ignore) in zip(probs, items):
                pred = labels_from_probabilities(pr, min_size=min_object_size(d), mask_threshold=t, seed_threshold=sd)
                pred = refine_outlines(pred, plane, d, lv, steepest=False)
                m50.append(match_instances(labels, pred, 0.5, ignore=ignore))
                m75.append(match_instances(labels, pred, 0.75, ignore=ignore))
                ratios += area_ratio(labels, pred)
            a50 = aggregate(m50)
            iou = np.average([m.mean_matched_iou for m in m50], weights=[m.tp for m in m50])
            print(
                f"| {name} | {sd:g} | {t:g} | {lv:g} | {a50.ap:.3f} | {aggregate(m75).ap:.3f} | {iou:.3f} | {np.median(ratios):.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
