"""Object confidence: how well each score ranks wrong objects below right ones, and what it costs.

    python benchmarks/object_scores.py [--model bundled] [--sets mnfinder_val,bbbc007]

Every image is segmented once as `segment` does (diameter estimated, probabilities kept). A predicted
object is "right" when its best IoU with a true object is at least 0.5 (the AP@0.5 match); the table
gives, per measure of `napari_unet.core.scores.object_measures`, the AUROC of right against wrong
objects, and the time of the reported score (`SCORE`) and of the doubt map next to the time of a plain
`segment` call (which includes the score): both come from the one forward pass.
Objects mostly inside an image's ignore mask (mnfinder's micronuclei) are left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_accuracy import load_dataset  # noqa: E402

from napari_unet.api import load_model  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import auroc, per_object_iou  # noqa: E402
from napari_unet.core.scores import SCORE, doubt_map, object_measures  # noqa: E402
from napari_unet.core.segment import segment_iter  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--sets", default="mnfinder_val,bbbc007")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    print(f"model {args.model}, {torch.get_num_threads()} threads\n")
    print("| set | objects | wrong | interior | certainty | edge | core | segment s | score (SCORE) s | map s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.sets.split(","):
        rows = {k: [] for k in ("interior", "certainty", "edge", "core")}
        right = []
        t_seg = t_score = t_map = 0.0
        for s in load_dataset(name):
            res = drain(segment_iter(s.image, model, device="cpu", measures=True))
            t0 = time.perf_counter()  # what `segment` costs, its own score included
            drain(segment_iter(s.image, model, device="cpu", diameter=res.diameter))
            t_seg += time.perf_counter() - t0
            measures = res.extra["measures"]
            ids = np.unique(res.labels)[1:]
            # The scoring cost, measured alone on this image's probabilities (segment_iter includes it).
            probs = res.extra["class_probabilities"]
            t0 = time.perf_counter()
            object_measures(res.labels, probs, (SCORE,))
            t_score += time.perf_counter() - t0
            t0 = time.perf_counter()
            doubt_map(probs)
            t_map += time.perf_counter() - t0
            _, best = per_object_iou(s.labels.astype(np.int32), res.labels)
            keep = np.ones(ids.size, bool)
            if s.ignore is not None:
                ignored = np.bincount(
                    res.labels.ravel(), weights=s.ignore.ravel().astype(float), minlength=ids.max() + 1
                )
                area = np.bincount(res.labels.ravel(), minlength=ids.max() + 1)
                keep = ignored[ids] <= 0.5 * area[ids]
            right += list(best[keep] >= 0.5)
            for k, v in measures.items():
                rows[k] += list(v[keep])
        y = np.array(right)
        a = {k: auroc(v, y) for k, v in rows.items()}
        print(f"| {name} | {y.size} | {(~y).sum()} | {a['interior']:.3f} | {a['certainty']:.3f} | {a['edge']:.3f} | "
              f"{a['core']:.3f} | {t_seg:.1f} | {t_score:.2f} | {t_map:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
