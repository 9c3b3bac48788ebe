"""Adjacent predicted objects: one nucleus cut in two, or two nuclei? (the evidence for `merge_cut_objects`)

    python benchmarks/cut_pairs.py [--model bundled]

Segments each set with the rejoin step off, finds every pair of touching predicted objects and calls it a *cut*
when both halves lie mostly in one true nucleus, a *pair* when they lie in two. Prints, per set, the median of
the features the rule uses (shared border / smaller object's equivalent diameter, solidity of the union) and
of the border's brightness relative to the dimmer object's interior, then how many cuts and true pairs the
rule (border >= 0.7, solidity >= 0.85) would join.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unet.core.instances import CUT_BORDER, CUT_SOLIDITY, pair_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_accuracy import load_dataset  # noqa: E402
from hard_cases import cases  # noqa: E402


def touching_pairs(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Features and the truth of every pair of 4-connected touching objects of `pred`."""
    img = ndi.gaussian_filter(np.asarray(image, np.float32), 1.0)
    if img.ndim == 3:
        img = img.mean(-1)
    edges = np.concatenate(
        [np.stack([a.ravel(), b.ravel()], 1) for a, b in ((pred[:, :-1], pred[:, 1:]), (pred[:-1], pred[1:]))]
    )
    edges = edges[(edges[:, 0] > 0) & (edges[:, 1] > 0) & (edges[:, 0] != edges[:, 1])]
    boxes = ndi.find_objects(pred)
    areas = np.bincount(pred.ravel())[1:]
    typical = float(np.median(areas[areas > 0])) if (areas > 0).any() else 1.0
    background = np.median(img[pred == 0]) if (pred == 0).any() else 0.0
    rows = []
    for p, q in np.unique(np.sort(edges, 1), axis=0):
        crop = tuple(
            slice(max(0, min(u.start, v.start) - 3), max(u.stop, v.stop) + 3)
            for u, v in zip(boxes[p - 1], boxes[q - 1])
        )
        P, Q = pred[crop] == p, pred[crop] == q
        inner_p, inner_q = ndi.binary_erosion(P, iterations=2), ndi.binary_erosion(Q, iterations=2)
        if inner_p.sum() < 5 or inner_q.sum() < 5:
            continue
        border = (P & ndi.binary_dilation(Q)) | (Q & ndi.binary_dilation(P))
        im = img[crop] - background
        border_length, solidity = pair_shape(P, Q)
        level = min(np.median(im[inner_p]), np.median(im[inner_q]))
        t = truth[crop]
        tp, tq = np.bincount(t[P]).argmax(), np.bincount(t[Q]).argmax()
        kind = "cut" if tp == tq and tp > 0 else "pair" if tp > 0 and tq > 0 else "other"
        rows.append(
            {
                "kind": kind,
                "border": border_length,
                "solidity": solidity,
                "brightness": float(np.median(im[border]) / max(level, 1e-6)),
                "union": float((P.sum() + Q.sum()) / typical),
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-union", type=float, default=1.6, help="also count the rule's joins with union <= this")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import napari_unet

    net = napari_unet.load_model(args.model)
    table = cases()
    sets = {
        "mnfinder val": load_dataset("mnfinder_val"),
        "mnfinder train": load_dataset("mnfinder_train"),
        "BBBC007": load_dataset("bbbc007"),
        "synth clean": table["synth clean"][1](),
        "synth dense touching": table["synth dense touching"][1](),
    }
    print("| set | cuts | true pairs | border, cuts / pairs | solidity, cuts / pairs | brightness, cuts / pairs "
          f"| union / median object, cuts / pairs | joined by the rule: cuts / pairs "
          f"| joined with union <= {args.max_union:g}: cuts / pairs |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, samples in sets.items():
        rows = []
        for s in samples:
            pred = np.asarray(napari_unet.segment(s.image, model=net, merge_cuts=False))
            rows += touching_pairs(s.image, pred, np.asarray(s.labels))
        by = {k: [r for r in rows if r["kind"] == k] for k in ("cut", "pair")}

        def med(kind, key, by=by):
            return np.median([r[key] for r in by[kind]]) if by[kind] else float("nan")

        def joined(kind, by=by, union=np.inf):
            return sum(
                r["border"] >= CUT_BORDER and r["solidity"] >= CUT_SOLIDITY and r["union"] <= union for r in by[kind]
            )

        print(
            f"| {name} | {len(by['cut'])} | {len(by['pair'])} | {med('cut', 'border'):.2f} / {med('pair', 'border'):.2f} "
            f"| {med('cut', 'solidity'):.2f} / {med('pair', 'solidity'):.2f} "
            f"| {med('cut', 'brightness'):.2f} / {med('pair', 'brightness'):.2f} "
            f"| {med('cut', 'union'):.2f} / {med('pair', 'union'):.2f} | {joined('cut')} / {joined('pair')} "
            f"| {joined('cut', union=args.max_union)} / {joined('pair', union=args.max_union)} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
