"""Which inference variant to use: speed on a 2048x2048 real canvas and accuracy on mnfinder val.

    python benchmarks/precision.py

Variants, each built on the previous: fp32 as trained; BatchNorm folded into the convolutions;
channels-last memory layout; bf16 autocast. Accuracy is AP@0.5 on mnfinder val at the true diameter,
plus the agreement (AP@0.5) of each variant's labels with the fp32 labels.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_accuracy import load_dataset  # noqa: E402
from segment_speed import real_canvas  # noqa: E402

from napari_unet.api import load_model  # noqa: E402
from napari_unet.core.instances import (  # noqa: E402
    labels_from_probabilities,
    median_diameter,
    min_object_size,
)
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.model import fuse_batchnorm  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, predict_plane  # noqa: E402


def variants(model):
    cpu = torch.device("cpu")
    plain = copy.deepcopy(model).eval()
    fused = fuse_batchnorm(copy.deepcopy(model))
    cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    yield "fp32", InferenceModel(plain, cpu, None)
    yield "fp32 + folded BN", InferenceModel(fused, cpu, None)
    yield "+ channels-last", InferenceModel(cl, cpu, None)
    yield "+ bf16 autocast (default)", InferenceModel(cl, cpu, torch.bfloat16)


def main() -> None:
    model = load_model()
    canvas = real_canvas((2048, 2048))
    lo, hi = percentile_range(canvas)
    plane = normalize_plane(canvas, lo, hi)
    val = load_dataset("mnfinder_val")
    ref = None
    print(f"# inference variants, {time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} CPU threads\n")
    print("| variant | predict 2048^2 s | speed-up | mnfinder val AP@0.5 | agreement with fp32 labels (AP@0.5) |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, infer in variants(model):
        drain(predict_plane(infer, plane[:256, :256]))
        t = time.perf_counter()
        drain(predict_plane(infer, plane))
        dt = time.perf_counter() - t
        base = base or dt
        preds, ms = [], []
        for s in val:
            d = median_diameter(s.labels)
            lo_, hi_ = percentile_range(s.image)
            probs = drain(predict_plane(infer, normalize_plane(s.image, lo_, hi_), scale=model.info.diameter / d))
            pred = labels_from_probabilities(probs, min_size=min_object_size(d))
            preds.append(pred)
            ms.append(match_instances(s.labels, pred, ignore=s.ignore))
        ref = ref or preds
        agree = aggregate([match_instances(r, p) for r, p in zip(ref, preds)]).ap
        print(f"| {name} | {dt:.2f} | {base / dt:.2f}x | {aggregate(ms).ap:.3f} | {agree:.3f} |")


if __name__ == "__main__":
    main()
