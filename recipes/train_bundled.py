"""Reproducible recipe for the bundled model: real hand-annotated nuclei + synthetic nuclei.

    python recipes/train_bundled.py --minutes 45 --out napari_unet/resources/bundled.safetensors

Data: ../shared/data/mnfinder/train (30 images, gold labels; micronuclei are not in the nuclei labels,
so they are masked out of the loss rather than taught as background), each rescaled so its median
nucleus diameter is the model's training diameter (24 px); and a pool of synthetic images from
`napari_unet.core.synth` (all styles). Batches mix both halves. Model selection on
mnfinder/val (AP@0.5) every `--eval-every` steps; the best checkpoint is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.core.augment import AugmentConfig, augment_batch  # noqa: E402
from napari_unet.core.instances import border_weights, class_targets  # noqa: E402
from napari_unet.core.losses import weighted_cross_entropy  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.model import UNet, UNetConfig, count_parameters  # noqa: E402
from napari_unet.core.modelfile import ModelInfo, save_model  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.segment import median_diameter, segment_iter  # noqa: E402
from napari_unet.core.synth import SynthStyle, synth_nuclei  # noqa: E402

DIAMETER = 24.0


def prepare(image, labels, ignore=None, diameter=None):
    """Normalise, rescale to the training diameter, and build targets, border weights and mask."""
    lo, hi = percentile_range(image)
    img = normalize_plane(image, lo, hi)
    d = diameter or median_diameter(labels) or DIAMETER
    f = DIAMETER / d
    if abs(f - 1) > 0.02:
        shape = (round(img.shape[0] * f), round(img.shape[1] * f))
        img = resize(img, shape, order=1, anti_aliasing=f < 1, preserve_range=True).astype(np.float32)
        labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
        if ignore is not None:
            ignore = resize(ignore, shape, order=0, anti_aliasing=False, preserve_range=True) > 0
    mask = np.ones(labels.shape, bool) if ignore is None else ~ndi.binary_dilation(ignore, iterations=3)
    return img, class_targets(labels).astype(np.int64), border_weights(labels), mask


def load_real(split_dir: Path):
    items = []
    for f in sorted((split_dir / "images").glob("*.tif")):
        img = tifffile.imread(f)
        lab = tifffile.imread(split_dir / "nuclei" / f.name).astype(np.int32)
        mn = tifffile.imread(split_dir / "micronuclei" / f.name) > 0
        items.append(prepare(img, lab, mn))
    return items


def crop_batch(pool, n, size, rng):
    imgs, tgts, wts, msks = [], [], [], []
    for _ in range(n):
        img, tgt, wt, msk = pool[rng.integers(len(pool))]
        H, W = img.shape
        if H < size or W < size:  # mirror-pad small images up to the crop size
            py, px = max(0, size - H), max(0, size - W)
            pad = ((py // 2, py - py // 2), (px // 2, px - px // 2))
            img, tgt, wt, msk = (np.pad(a, pad, mode="reflect") for a in (img, tgt, wt, msk))
            H, W = img.shape
        y, x = rng.integers(0, H - size + 1), rng.integers(0, W - size + 1)
        sl = (slice(y, y + size), slice(x, x + size))
        imgs.append(img[sl]), tgts.append(tgt[sl]), wts.append(wt[sl]), msks.append(msk[sl])
    t = torch.from_numpy
    return t(np.stack(imgs))[:, None], t(np.stack(tgts)), t(np.stack(wts)), t(np.stack(msks))


def evaluate(model, val_sets):
    model.eval()
    ms = []
    for image, labels, ignore, d in val_sets:
        gen = segment_iter(image, model, device="cpu", diameter=d)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                pred = stop.value.labels
                break
        ms.append(match_instances(labels, pred, 0.5, ignore=ignore))
    model.train()
    return aggregate(ms).ap


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--minutes", type=float, default=45)
    p.add_argument("--out", type=Path, default=ROOT / "napari_unet" / "resources" / "bundled.safetensors")
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--mode", default="same", choices=["same", "valid"])
    p.add_argument("--norm", default="batch", choices=["batch", "none"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--synth", type=int, default=400, help="synthetic images in the pool")
    p.add_argument("--synth-frac", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    real = load_real(args.data / "mnfinder" / "train")
    style = SynthStyle(diameter=(16.0, 34.0))
    synth = [prepare(*synth_nuclei((256, 256), rng=100_000 + i, style=style)) for i in range(args.synth)]
    val_sets = []
    vdir = args.data / "mnfinder" / "val"
    for f in sorted((vdir / "images").glob("*.tif")):
        lab = tifffile.imread(vdir / "nuclei" / f.name).astype(np.int32)
        val_sets.append((tifffile.imread(f), lab, tifffile.imread(vdir / "micronuclei" / f.name) > 0, median_diameter(lab)))
    print(f"data ready: {len(real)} real, {len(synth)} synthetic, {time.time() - t0:.0f}s", flush=True)

    config = UNetConfig(base=args.base, depth=args.depth, mode=args.mode, norm=args.norm)
    model = UNet(config)
    args.patch = model.fit_input_size(args.patch)
    print(f"model: {config} params={count_parameters(model)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    aug = AugmentConfig()
    g = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    t_train = time.time()
    best_ap, best_state, history = -1.0, None, []
    n_synth = round(args.batch * args.synth_frac)
    step = 0
    ema = None
    while True:
        elapsed = time.time() - t_train
        if elapsed > budget:
            break
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        lr = lr * min(1.0, (step + 1) / 100)  # warm-up
        for group in opt.param_groups:
            group["lr"] = lr
        parts = [crop_batch(real, args.batch - n_synth, args.patch, rng), crop_batch(synth, n_synth, args.patch, rng)]
        img, tgt, wt, msk = (torch.cat(z) for z in zip(*parts))
        img, tgt, wt, msk = augment_batch(img, tgt, wt, msk, aug, g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(img)
        if logits.shape[-1] != tgt.shape[-1]:  # valid mode: targets cropped to the output
            c = (tgt.shape[-1] - logits.shape[-1]) // 2
            tgt, wt, msk = (a[..., c : c + logits.shape[-2], c : c + logits.shape[-1]] for a in (tgt, wt, msk))
        loss = weighted_cross_entropy(logits, tgt, wt, msk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0:
            print(f"step {step} t={elapsed:.0f}s loss={ema:.4f} lr={lr:.2e} {step / max(elapsed, 1e-9):.2f} it/s", flush=True)
        if step % args.eval_every == 0:
            ap = evaluate(model, val_sets)
            history.append({"step": step, "seconds": round(elapsed), "loss": round(ema, 4), "val_ap50": round(ap, 4)})
            print(f"  eval step {step}: mnfinder val AP@0.5 = {ap:.3f}", flush=True)
            if ap >= best_ap:
                best_ap, best_state = ap, {k: v.clone() for k, v in model.state_dict().items()}
    ap = evaluate(model, val_sets)
    history.append({"step": step, "seconds": round(time.time() - t_train), "loss": round(ema, 4), "val_ap50": round(ap, 4)})
    print(f"final step {step}: mnfinder val AP@0.5 = {ap:.3f}", flush=True)
    if ap >= best_ap:
        best_ap, best_state = ap, model.state_dict()
    model.load_state_dict(best_state)
    info = ModelInfo(
        config=config,
        diameter=DIAMETER,
        name="bundled",
        provenance={
            "recipe": "recipes/train_bundled.py",
            "args": {k: str(v) for k, v in vars(args).items() if k != "data"},
            "data": ["mnfinder/train (30 images, gold)", f"synthetic x{args.synth} (napari_unet.core.synth)"],
            "selected_on": "mnfinder/val AP@0.5",
            "val_ap50": round(best_ap, 4),
            "steps": step,
            "train_seconds": round(time.time() - t_train),
            "date": date.today().isoformat(),
            "history": history,
        },
    )
    save_model(model, info, args.out)
    print(json.dumps({"best_val_ap50": best_ap, "steps": step, "out": str(args.out)}), flush=True)


if __name__ == "__main__":
    main()
