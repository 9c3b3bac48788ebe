"""Retraining from 3D corrections: XY planes only vs XY planes + the XZ/YZ slices (`python benchmarks/retrain_3d.py`).

A domain the bundled model handles badly in 3D (`core.synth3d`, dim stacks: 20-40 photons a nucleus, at
anisotropy 2). The annotator paints `--objects` whole nuclei of one training stack with a 3D brush (each
true nucleus and a 2-voxel rim, their ground truth), as napari's 3D view with n-edit-dim 3 allows. The
same painted voxels train the bundled model for `--seconds`, once as the XY planes they cross
(`training_planes`), once with the XZ and YZ slices they cover as areas too (`side_view_planes`, what the
Retrain widget adds for a ZYX layer). Held-out stacks (other seeds) are segmented in 3D (`mode="3d"`);
3D AP@0.5 before and after, per seed of the fine-tune.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.synth3d import Synth3DStyle, synth_nuclei_3d  # noqa: E402
from napari_unet.core.train import train_iter  # noqa: E402
from napari_unet.core.trainingdata import side_view_planes, training_planes  # noqa: E402

DIM = Synth3DStyle(photons=(20.0, 40.0))
A = 2.0


def stack(seed: int):
    return synth_nuclei_3d((24, 128, 128), anisotropy=A, rng=seed, style=DIM)


def ap3d(model, held) -> float:
    return aggregate([match_instances(lab, segment(img, model, mode="3d", anisotropy=A, diameter=22.0))
                      for img, lab in held]).ap  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objects", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds")
    args = p.parse_args()
    torch.set_num_threads(2)
    bundled = load_model("bundled")
    img, lab = stack(50)
    held = [stack(s) for s in (60, 61, 62)]
    ids = np.random.default_rng(0).permutation(np.unique(lab)[1:])[: args.objects]
    painted = ndi.binary_dilation(np.isin(lab, ids), iterations=2)
    xy = training_planes(img, lab, painted)
    side = side_view_planes(img, lab, painted, anisotropy=A)
    print(
        f"{args.objects} nuclei painted ({painted.sum()} voxels): {len(xy[0])} XY planes, {len(side[0])} XZ/YZ slices"
    )
    print(f"bundled: held-out 3D AP@0.5 {ap3d(bundled, held):.3f} ({sum(int(lab.max()) for _, lab in held)} nuclei)")
    print("| training data | seed | steps | held-out 3D AP@0.5 |\n|---|---:|---:|---:|")
    for seed in range(args.seeds):
        for name, (ims, labs, masks) in {
            "XY planes": xy[:3],
            "XY planes + XZ/YZ slices": (xy[0] + side[0], xy[1] + side[1], xy[2] + side[2]),
        }.items():
            t0 = time.perf_counter()
            res = drain(train_iter(ims, labs, masks, init=bundled, seconds=args.seconds, device="cpu",
                                   diameter=22.0, seed=seed))  # fmt: skip
            print(
                f"| {name} | {seed} | {res.metrics['steps']} | {ap3d(res.model, held):.3f} |"
                f"  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
