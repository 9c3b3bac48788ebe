"""Object confidence: how well each score ranks wrong objects below right ones, and what it costs.

    python benchmarks/object_scores.py [--model bundled] [--sets mnfinder_val,bbbc007]

Every image is segmented once as `segment` does (diameter estimated, probabilities kept). A predicted
object is "right" when its best IoU with a true object is at least 0.5 (the AP@0.5 match); the table
gives, per measure of `napari_unet.core.scores.object_measures`, the AUROC of right against wrong
objects, and the time of the reported score (`SCORE`) and of the doubt map next to the time of a plain
`segment` call (which includes the score): both come from the one forward pass.
Objects mostly inside an image's ignore mask (mnfinder's micronuclei) are left out.

With `--multipass`, two measures that cost extra forward passes are ranked too, each with its time:
``flips``, the mean best IoU of the object with the objects segmented on the image's three flips
(flipped back), and ``dropout``, the same against three segmentations with the bridge's dropout left
on (Monte-Carlo dropout, p = `--dropout`); and each multiplied by the reported score.
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

FLIPS = ((-1,), (-2,), (-2, -1))


class _DropoutOn(torch.nn.Module):
    """Channel dropout that stays on in eval mode (Monte-Carlo dropout samples)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return torch.nn.functional.dropout2d(x, self.p, training=True)


def wrong_kinds(true: np.ndarray, pred: np.ndarray, image: np.ndarray) -> tuple[list[str], np.ndarray]:
    """What each predicted object is, aligned with its ascending ids: "right" (IoU >= 0.5), "unlabelled"
    (over half of it on ground no true object covers), "merge" (over half of each of 2+ true objects),
    "fragment" (mostly inside one true object, which it covers less than 60 % of) or "outline" (the rest);
    and every object's contrast over the image's ground (pixels neither labelled nor predicted), as a
    fraction of the labelled nuclei's median contrast."""
    im = np.asarray(image, np.float32)
    im = im.mean(-1) if im.ndim == 3 else im
    true = true.astype(np.int64)
    n, m = int(pred.max()) + 1, int(true.max()) + 1
    inter = np.zeros((n, m), np.int64)
    np.add.at(inter, (pred.ravel(), true.ravel()), 1)
    area_p, area_t = inter.sum(1), inter.sum(0)
    ground = float(np.median(im[(pred == 0) & (true == 0)]))
    nuc = float(np.median(im[true > 0])) - ground if m > 1 else 1.0
    mean = np.bincount(pred.ravel(), weights=im.ravel(), minlength=n) / np.maximum(area_p, 1)
    _, best = per_object_iou(true, pred)
    ids = np.unique(pred)[1:]
    kinds = []
    for j, i in enumerate(ids):
        row = inter[i]
        of_true = row[1:] / np.maximum(area_t[1:], 1)
        if best[j] >= 0.5:
            kinds.append("right")
        elif row[0] > 0.5 * area_p[i]:
            kinds.append("unlabelled")
        elif (of_true > 0.5).sum() >= 2:
            kinds.append("merge")
        elif row[1:].max() > 0.6 * area_p[i] and of_true.max() < 0.6:
            kinds.append("fragment")
        else:
            kinds.append("outline")
    return kinds, (mean[ids] - ground) / max(nuc, 1e-6)


def agreement(labels: np.ndarray, others: list[np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Mean over `others` of each object's best IoU with their objects, aligned with `ids`."""
    out = np.zeros(ids.size)
    for other in others:
        out += per_object_iou(labels, other)[0]  # ascending ids, as `ids`
    return out / len(others)


def flip_passes(image, model, diameter) -> list[np.ndarray]:
    """Labels of the image segmented flipped, flipped back (the spatial axes are the first two)."""
    out = []
    for dims in FLIPS:
        axes = tuple(d % 2 for d in dims)
        res = drain(segment_iter(np.flip(image, axes), model, device="cpu", diameter=diameter))
        out.append(np.flip(res.labels, axes))
    return out


def dropout_passes(image, model, diameter, p: float, n: int = 3) -> list[np.ndarray]:
    import copy

    net = copy.deepcopy(model)
    net.dropout = _DropoutOn(p)
    out = []
    for k in range(n):
        torch.manual_seed(k)
        out.append(drain(segment_iter(image, net, device="cpu", diameter=diameter)).labels)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--sets", default="mnfinder_val,bbbc007")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--multipass", action="store_true", help="also rank flip and dropout agreement (4x the time)")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout probability of the MC samples")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    print(f"model {args.model}, {torch.get_num_threads()} threads\n")
    multi = ("flips", "certainty x flips", "dropout", "certainty x dropout") if args.multipass else ()
    print("| set | objects | wrong | interior | certainty | edge | core | "
          + "".join(f"{k} | " for k in multi) + "segment s | score (SCORE) s | map s |"
          + (" flips s | dropout s |" if multi else ""))  # fmt: skip
    print("|---|---:|---:|" + "---:|" * (7 + len(multi) + (2 if multi else 0)))
    breakdown = {}
    for name in args.sets.split(","):
        rows = {k: [] for k in ("interior", "certainty", "edge", "core", *multi)}
        right, kinds, contrast = [], [], []
        t_seg = t_score = t_map = t_flips = t_drop = 0.0
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
            k_, c_ = wrong_kinds(s.labels, res.labels, s.image)
            kinds += list(np.array(k_)[keep])
            contrast += list(c_[keep])
            if multi:
                t0 = time.perf_counter()
                measures["flips"] = agreement(res.labels, flip_passes(s.image, model, res.diameter), ids)
                t_flips += time.perf_counter() - t0
                t0 = time.perf_counter()
                others = dropout_passes(s.image, model, res.diameter, args.dropout)
                measures["dropout"] = agreement(res.labels, others, ids)
                t_drop += time.perf_counter() - t0
                for k in ("flips", "dropout"):
                    measures[f"certainty x {k}"] = measures["certainty"] * measures[k]
            for k, v in measures.items():
                rows[k] += list(v[keep])
        y = np.array(right)
        a = {k: auroc(v, y) for k, v in rows.items()}
        print(f"| {name} | {y.size} | {(~y).sum()} | {a['interior']:.3f} | {a['certainty']:.3f} | {a['edge']:.3f} | "
              f"{a['core']:.3f} | " + "".join(f"{a[k]:.3f} | " for k in multi)
              + f"{t_seg:.1f} | {t_score:.2f} | {t_map:.2f} |"
              + (f" {t_flips:.1f} | {t_drop:.1f} |" if multi else ""), flush=True)  # fmt: skip
        breakdown[name] = (np.array(kinds), np.array(rows[SCORE]), np.array(contrast))
    print("\nThe objects by kind (`wrong_kinds`), with the AUROC of the reported score against the right ones:\n")
    print("| set | kind | objects | median score | AUROC vs right | contrast (10th / 50th percentile) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (kinds, score, contrast) in breakdown.items():
        for kind in ("right", "unlabelled", "fragment", "merge", "outline"):
            sel = kinds == kind
            if not sel.any():
                continue
            both = sel | (kinds == "right")
            a = auroc(score[both], kinds[both] == "right") if kind != "right" else float("nan")
            lo, mid = np.percentile(contrast[sel], [10, 50])
            print(f"| {name} | {kind} | {sel.sum()} | {np.median(score[sel]):.3f} | {a:.3f} | {lo:.2f} / {mid:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
