"""Reproducible recipe for the bundled model: real hand-annotated nuclei + synthetic nuclei.

v1 (`recipes/bundled_v1.safetensors`, log `train_bundled_v1.log`) was trained from scratch:

    python recipes/train_bundled.py --v1 --minutes 55 --out recipes/bundled_v1.safetensors

v2 (the bundled model now, log `train_bundled_v2.log`) starts from v1 and trains on the hard cases
of other labs' images (`napari_unet.core.appearance`) and the wide synthetic style (`synth.WIDE`):

    python recipes/train_bundled.py --init recipes/bundled_v1.safetensors --minutes 60 --lr 1e-3 --bf16 \
        --eval-every 300 --mask-threshold 0.6 --checkpoint /tmp/v2.ckpt --out napari_unet/resources/bundled.safetensors

(`--mask-threshold` only goes into the file's header: the outline threshold, chosen afterwards on the
selection sets with `benchmarks/outline_threshold.py`.)

A run writes `--checkpoint` every `--eval-every` steps; the same command with `--resume` carries on
where it stopped (same learning-rate schedule, same data), so a run may span sessions.

Data: ../shared/data/mnfinder/train (30 images, gold labels; micronuclei are not in the nuclei labels,
so they are masked out of the loss rather than taught as background), each rescaled so its median
nucleus diameter is the model's training diameter (24 px); and a pool of synthetic images from
`napari_unet.core.synth` (all styles). Batches mix both halves. Model selection on
mnfinder/val (AP@0.5) every `--eval-every` steps (v2: the mean of mnfinder/val and a synthetic
validation set in the wide style, seeds apart from the training pool); the best weights are written.
With `--init`, the starting weights are scored first as step 0, so a fine-tune that never beats them
on the selection sets writes them back. `--outliers` adds condensed nuclei up to 30x, dim nuclei and
bright debris to the hard-case renderings (the fine-tunes of 2026-12-05 in benchmarks/RESULTS.md);
`--defocus P` blurs a share P of them as a defocused widefield image does; `--crowd P` first packs a
share P of them with copies of their own nuclei (`appearance.crowd`), and `--crowd-seamless Q` a share Q of
those with no line between touching copies; `--distill W` (with `--init`) adds W x
the KL divergence from the starting model's probabilities on every crop but the crowded renders (and,
with `--stretch`, every other crop, stretched: the teacher merges long nuclei end to end), so a fine-tune
learns those and keeps the starting model's answers elsewhere (learning without forgetting). With
`--teacher-view native` the teacher answers each crop before its augmentation, and its answer is warped by the
crop's geometry: the student is taught the starting model's answers at the training scale and intensity, whatever
zoom, gamma or noise it sees (a fine-tune that falls off more slowly under a wrong size estimate).
`--distill-crops real` leaves the synthetic crops to their labels alone (the teacher merges touching synthetic
nuclei that have no seam).
`--widen BASE` (with `--init`) starts from a wider copy of the starting model that computes the same function
(`model.widen`; base 24 from the bundled model: benchmarks/RESULTS.md, "A wider network, fine-tuned").
`--seam LOW,HIGH` parts touching synthetic nuclei by a dark seam, as `synth.WIDE` has done since v2.1;
the default (no seam) keeps the synthetic images v2 trained on.
The hard-case suite (`benchmarks/hard_cases.py`) is never used for selection. `--no-real` trains on
the synthetic pool alone and selects on synthetic validation images (no data folder needed), and
`--steps N` stops after N optimizer steps instead of `--minutes` (the cosine schedule then runs over
the steps): with a tiny network (`--base 4 --depth 2`) that makes a run of seconds for the tests.

More than one process (`recipes/ddp.py`), on the CPU (gloo) or one GPU per process (NCCL, `--device cuda`):

    python -m torch.distributed.run --standalone --nproc_per_node 2 recipes/train_bundled.py --threads 1 ...

Every rank builds the same data pools and the same initial weights (DDP also broadcasts rank 0's),
and draws its own crops and augmentations (its own seed); `--batch` is per process, so the global
batch is N x batch. The learning rate is not scaled with N: the recipe's schedule was tuned at batch
8, and a larger batch is taken as less noise at the same step size (`--lr` to change it). Rank 0
alone evaluates, logs and writes the checkpoint and the model file; its clock decides the stop and the
learning rate of every step, so that all ranks stop at the same step. `--resume` needs as many
processes as wrote the checkpoint (it holds each rank's data stream).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import tifffile
import torch
from safetensors.torch import save_file
from scipy import ndimage as ndi
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ddp  # noqa: E402 - recipes/ddp.py, beside this script

from napari_unet.api import segment  # noqa: E402
from napari_unet.core.appearance import perturb  # noqa: E402
from napari_unet.core.augment import AugmentConfig, augment_batch  # noqa: E402
from napari_unet.core.instances import (  # noqa: E402
    border_weights,
    class_targets,
    median_diameter,
)
from napari_unet.core.losses import masked_loss  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.model import UNet, UNetConfig, count_parameters, widen  # noqa: E402
from napari_unet.core.modelfile import (  # noqa: E402
    ModelInfo,
    read_model,  # noqa: E402
    save_model,
)
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.synth import WIDE, SynthStyle, synth_nuclei  # noqa: E402

DIAMETER = 24.0
#: `--teacher-view native`: pixels this close to a crop's edge, where the teacher saw no context, are not taught.
NATIVE_MARGIN = 16


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
    """`n` random crops of `size` from `pool`: image, targets, weights and mask tensors, and the pool's indices."""
    imgs, tgts, wts, msks, picks = [], [], [], [], []
    for _ in range(n):
        picks.append(int(rng.integers(len(pool))))
        img, tgt, wt, msk = pool[picks[-1]]
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
    return t(np.stack(imgs))[:, None], t(np.stack(tgts)), t(np.stack(wts)), t(np.stack(msks)), picks


def evaluate(model, val_sets):
    model.eval()
    ms = []
    device = next(model.parameters()).device  # the training device (the CPU unless --device cuda)
    for image, labels, ignore, d in val_sets:
        pred = segment(image, model, device=device, diameter=d)
        ms.append(match_instances(labels, pred, 0.5, ignore=ignore))
    model.train()
    return aggregate(ms).ap


def wide_synth(i: int, seam: tuple[float, float] = (1.0, 1.0)):
    """Synthetic training image `i` in the wide style; its size grows with its nuclei.

    `seam`: the dark seam between touching nuclei (`SynthStyle.seam`). v2 trained without one, before
    `synth.WIDE` gained it, so (1, 1) keeps v2's images."""
    rng = np.random.default_rng(i)
    d = float(np.exp(rng.uniform(np.log(8.0), np.log(80.0))))
    side = int(np.clip(9 * d, 256, 640))
    return synth_nuclei((side, side), rng=rng, style=replace(WIDE, diameter=(d, d), seam=seam))


def real_variants(
    split_dir: Path,
    n: int,
    seed: int,
    outliers: bool = False,
    dim_max: float = 12.0,
    defocus_p: float = 0.0,
    crowd_p: float = 0.0,
    seamless_p: float = 0.0,
):
    """`n` hard-case renderings (`appearance.perturb`) of every real image of a split, and whether each was
    crowded (`perturb`'s first draw, read from a copy of its generator)."""
    items, crowded = [], []
    for k, f in enumerate(sorted((split_dir / "images").glob("*.tif"))):
        img = tifffile.imread(f)
        lab = tifffile.imread(split_dir / "nuclei" / f.name).astype(np.int32)
        mn = tifffile.imread(split_dir / "micronuclei" / f.name) > 0
        for v in range(n):
            crowded.append(crowd_p > 0 and np.random.default_rng([seed, k, v]).random() < crowd_p)
            out, lab_v = perturb(
                img, lab, np.random.default_rng([seed, k, v]), outliers=outliers, dim_max=dim_max,
                defocus_p=defocus_p, crowd_p=crowd_p, seamless_p=seamless_p,
            )  # fmt: skip
            mn_v = mn if lab_v.shape == mn.shape else resize(mn, lab_v.shape, order=0, anti_aliasing=False) > 0
            if crowd_p > 0:  # a nucleus copied over a micronucleus is taught, not masked out
                mn_v = mn_v & (lab_v == 0)
            items.append(prepare(out, lab_v, mn_v))
    return items, crowded


def seam_fractions(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH fractions such as 0.1,0.5, got {text!r}") from None
    try:
        SynthStyle(seam=(lo, hi))  # its own check of the fractions
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the bundled model (also under torchrun; see the module docstring).")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--no-real", action="store_true", help="synthetic data only (no --data needed); selection on it")
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--steps", type=int, help="stop after N optimizer steps, not --minutes (cosine over the steps)")
    p.add_argument("--out", type=Path, default=ROOT / "napari_unet" / "resources" / "bundled.safetensors")
    p.add_argument("--v1", action="store_true", help="v1's data: mnfinder + the default synthetic style, no hard cases")
    p.add_argument(
        "--init", type=Path, help="start from this model file's weights (v2: recipes/bundled_v1.safetensors)"
    )
    p.add_argument("--checkpoint", type=Path, help="write the run's state here every --eval-every steps")
    p.add_argument("--resume", action="store_true", help="carry on from --checkpoint (with as many processes)")
    p.add_argument("--base", type=int, default=16)
    p.add_argument(
        "--widen",
        type=int,
        metavar="BASE",
        help="with --init: widen the starting model to BASE channels in its first stage, computing the same "
        "function at step 0 (`model.widen`: the new channels are read with zero weights)",
    )
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--mode", default="same", choices=["same", "valid"])
    p.add_argument("--norm", default="batch", choices=["batch", "none"])
    p.add_argument("--batch", type=int, default=8, help="crops per step and process (global batch: N x batch)")
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--synth", type=int, default=500, help="synthetic images in the pool")
    p.add_argument("--synth-val", type=int, default=8, help="synthetic validation images (v2 and --no-real)")
    p.add_argument("--variants", type=int, default=3, help="hard-case renderings of each real image (v2)")
    p.add_argument("--synth-frac", type=float, default=0.5)
    p.add_argument(
        "--seam",
        type=seam_fractions,
        default=(1.0, 1.0),
        help="LOW,HIGH: the signal left where synthetic nuclei touch, drawn per image (default 1,1: no seam, "
        "v2's images; synth.WIDE uses 0.1,0.5)",
    )
    p.add_argument(
        "--original-frac",
        type=float,
        default=0.25,
        help="v2: share of the real crops taken from the unperturbed images (default: as in the pool)",
    )
    p.add_argument(
        "--outliers",
        action="store_true",
        help="the hard-case renderings also draw condensed nuclei up to 30x, dim nuclei and bright debris",
    )
    p.add_argument(
        "--dim-max",
        type=float,
        default=12.0,
        help="with --outliers: dim nuclei are 2 to this many times dimmer (at 10x they look like the faint cell "
        "bodies of the autofluorescent grain row)",
    )
    p.add_argument(
        "--defocus",
        type=float,
        default=0.0,
        metavar="P",
        help="share of the hard-case renderings defocused (appearance.defocus: the field or some nuclei blurred)",
    )
    p.add_argument(
        "--crowd",
        type=float,
        default=0.0,
        metavar="P",
        help="share of the hard-case renderings crowded first (appearance.crowd: the image's own nuclei packed "
        "against each other, touching and overlapping)",
    )
    p.add_argument(
        "--crowd-seamless",
        type=float,
        default=0.0,
        metavar="P",
        help="with --crowd: share of the crowded renders whose copies keep the brighter signal where they overlap "
        "(appearance.crowd(seamless=True): no line between touching nuclei; the others sum it into a bright one)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="W",
        help="with --init: add W x the KL divergence from the starting model's class probabilities (frozen, eval "
        "mode) on every crop but the crowded renders (and, with --stretch, the stretched crops), so that a "
        "fine-tune learns those and keeps its behaviour elsewhere (learning without forgetting)",
    )
    p.add_argument(
        "--teacher-view",
        choices=["augmented", "native", "native-real"],
        default="augmented",
        help="with --distill: the teacher answers the student's own augmented crop (augmented), or the crop before "
        "augmentation, its answer then warped by the same geometry (native): the student learns the starting "
        "model's answers at the training scale and intensity whatever the zoom, noise or gamma it sees; native-real: "
        "native on the real crops, augmented on the synthetic ones",
    )
    p.add_argument(
        "--distill-crops",
        choices=["all", "real"],
        default="all",
        help="with --distill: the crops the teacher teaches (all: every one but those above); real: the synthetic "
        "crops learn from their labels alone (the teacher merges touching synthetic nuclei that have no seam)",
    )
    p.add_argument(
        "--stretch",
        type=float,
        default=1.0,
        metavar="S",
        help="half the crops stretched along one axis by up to S (area kept) before the rotation: elongated "
        "nuclei in any orientation (augment.AugmentConfig.stretch; default 1: off, as the bundled models)",
    )
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, the same for any number of processes")
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda under torchrun: cuda:LOCAL_RANK")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="outline threshold written into the model file")
    p.add_argument(
        "--dump-weights",
        type=Path,
        metavar="DIR",
        help="test hook: every rank writes its state dict to DIR/rank<R>_start.safetensors before the first "
        "step and DIR/rank<R>.safetensors after the last (not the selected best), to compare the ranks",
    )
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.distill < 0 or (args.distill and not args.init):
        p.error("--distill W needs --init (the starting model teaches) and W >= 0")
    if args.teacher_view != "augmented" and not args.distill:
        p.error(f"--teacher-view {args.teacher_view} needs --distill W")
    if args.distill_crops != "all" and not args.distill:
        p.error(f"--distill-crops {args.distill_crops} needs --distill W")
    if args.widen is not None and not args.init:
        p.error("--widen BASE needs --init (the model to widen)")
    if args.crowd_seamless and not (0 < args.crowd_seamless <= 1 and args.crowd > 0):
        p.error("--crowd-seamless P needs --crowd and 0 < P <= 1")
    if args.no_real and args.synth_val < 1:
        p.error("--no-real selects on synthetic validation images: --synth-val must be at least 1")
    return args


def load_data(args):
    """(real pool, its first n_orig unperturbed, which of the rest were crowded, real val sets, synthetic pool,
    synthetic val sets, augmentation)."""
    real, val_sets, crowded = [], [], []
    if not args.no_real:
        tdir, vdir = args.data / "mnfinder" / "train", args.data / "mnfinder" / "val"
        if not (tdir / "images").is_dir():
            raise SystemExit(f"no training images in {tdir / 'images'}: pass --data, or --no-real (synthetic only)")
        real = load_real(tdir)
        for f in sorted((vdir / "images").glob("*.tif")):
            lab = tifffile.imread(vdir / "nuclei" / f.name).astype(np.int32)
            val_sets.append(
                (tifffile.imread(f), lab, tifffile.imread(vdir / "micronuclei" / f.name) > 0, median_diameter(lab))
            )
    n_orig = len(real)
    if args.v1:
        style = SynthStyle(diameter=(16.0, 34.0))
        synth = [prepare(*synth_nuclei((256, 256), rng=100_000 + i, style=style)) for i in range(args.synth)]
        # v1 selected on mnfinder val alone; without it, on synthetic images of its own style.
        vals = (synth_nuclei((256, 256), rng=900_000 + i, style=style) for i in range(args.synth_val))
        synth_val = [(im, lab, None, median_diameter(lab)) for im, lab in vals] if args.no_real else []
        aug = AugmentConfig(stretch=args.stretch)
    else:
        if real:
            renders, crowded = real_variants(
                args.data / "mnfinder" / "train", args.variants, args.seed, args.outliers, args.dim_max, args.defocus,
                args.crowd, args.crowd_seamless,
            )  # fmt: skip
            real += renders
        synth = [prepare(*wide_synth(100_000 + i, args.seam)) for i in range(args.synth)]
        vals = (wide_synth(900_000 + i, args.seam) for i in range(args.synth_val))
        synth_val = [(im, lab, None, median_diameter(lab)) for im, lab in vals]
        # the size estimate may miss by 20 %; cover it twice over
        aug = AugmentConfig(scale=(0.6, 1.6), stretch=args.stretch)
    return real, n_orig, crowded, val_sets, synth, synth_val, aug


def dump_state(model, path: Path) -> None:
    """The `--dump-weights` test hook: `model`'s state dict as a plain safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def main():
    args = parse_args()
    ctx = ddp.setup(args.device)

    def log(*a, **k):
        if ctx.main:  # one voice: rank 0 logs
            print(*a, **k)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the same on every rank: identical initial weights (DDP also broadcasts rank 0's)
    rng = np.random.default_rng(ddp.rank_seed(args.seed, ctx.rank))  # each rank draws its own crops
    t0 = time.time()

    real, n_orig, crowded, val_sets, synth, synth_val, aug = load_data(args)
    log(f"data ready: {len(real)} real, {len(synth)} synthetic, {time.time() - t0:.0f}s", flush=True)

    def score(model):
        """(selection score, mnfinder val AP@0.5 or None without real data)."""
        ap = evaluate(model, val_sets) if val_sets else None
        if not synth_val:
            return ap, ap
        s = evaluate(model, synth_val)
        return (s, None) if ap is None else ((ap + s) / 2, ap)

    def report(head, sel, ap):
        what = "synthetic val AP@0.5 (selection)" if ap is None else "mnfinder val AP@0.5"
        log(f"{head}: {what} = {sel if ap is None else ap:.3f}, selection score {sel:.3f}", flush=True)

    def entry(step, seconds, ema, sel, ap):
        val = None if ap is None else round(ap, 4)
        return {
            "step": step,
            "seconds": round(seconds),
            "loss": None if ema is None else round(ema, 4),
            "val_ap50": val,
            "select": round(sel, 4),
        }

    config = UNetConfig(base=args.base, depth=args.depth, mode=args.mode, norm=args.norm)
    if args.init:
        model, init_info = read_model(args.init)
        if args.widen:
            model = widen(model, args.widen)
        config = model.config
        model.train()
    else:
        model = UNet(config)
    if ctx.rank:  # dropout masks of their own on the other ranks; rank 0 keeps the single-process stream
        torch.manual_seed(ddp.rank_seed(args.seed, ctx.rank))
    model.to(ctx.device)
    args.patch = model.fit_input_size(args.patch)
    log(f"model: {config} params={count_parameters(model)}" + (f" processes={ctx.world}" * ctx.distributed), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator(device=ctx.device).manual_seed(ddp.rank_seed(args.seed, ctx.rank))
    budget = args.minutes * 60
    best, best_state, history, step, ema, done = -1.0, None, [], 0, None, 0.0
    if args.resume:  # every rank loads the same checkpoint, and its own data stream from it
        ck = torch.load(args.checkpoint, weights_only=True, map_location="cpu")
        if ck.get("world_size", 1) != ctx.world:
            raise SystemExit(f"{args.checkpoint} was written by {ck.get('world_size', 1)} process(es), not {ctx.world}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        best_state, best, step, ema, done = ck["best_state"], ck["best"], ck["step"], ck["ema"], ck["seconds"]
        history = json.loads(ck["history"])
        if ctx.distributed:
            rng.bit_generator.state = json.loads(ck["rank_rngs"])[ctx.rank]
            g.set_state(ck["rank_torch_rngs"][ctx.rank])
        else:
            rng.bit_generator.state = json.loads(ck["rng"])
            g.set_state(ck["torch_rng"])
        log(f"resumed at step {step}, {done:.0f}s of {budget:.0f}s done", flush=True)
    net = ddp.wrap(model, ctx)  # forward and backward through `net`; everything else uses `model` itself
    teacher, kl_ema = None, None  # kl_ema: the distillation term in the log (loss includes it)
    if args.distill:  # the starting weights as they are used: eval mode (running BatchNorm statistics, no dropout)
        teacher = read_model(args.init)[0].to(ctx.device).eval().requires_grad_(False)
        if args.teacher_view != "augmented" and teacher.config.mode != "same":
            raise SystemExit(
                f"--teacher-view {args.teacher_view} needs a starting model in 'same' mode (its answers fill the crop)"
            )

    def teacher_probs(x):
        with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            return torch.softmax(teacher(x).float(), 1)

    if args.dump_weights:
        dump_state(model, args.dump_weights / f"rank{ctx.rank}_start.safetensors")
    if args.init and not args.resume and ctx.main:
        # A fine-tune starts from weights that were selected already: they are step 0's candidate, so a run that
        # never beats them on the selection sets writes them back rather than something worse.
        sel, ap = score(model)
        history.append(entry(0, 0.0, None, sel, ap))
        report("  eval step 0 (--init)", sel, ap)
        best, best_state = sel, {k: v.clone() for k, v in model.state_dict().items()}
    t_train = time.time() - done
    n_synth = args.batch if args.no_real else round(args.batch * args.synth_frac)
    warmup = 100 if args.init is None else 20
    while True:
        # Rank 0's clock rules: the same stop step and the same learning rate on every rank (separate clocks
        # would stop the ranks at different steps, and the last one would wait for the others forever).
        elapsed = ddp.broadcast_float(time.time() - t_train, ctx)
        if (step >= args.steps) if args.steps else (elapsed > budget):
            break
        progress = step / args.steps if args.steps else elapsed / budget
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        lr = lr * min(1.0, (step + 1) / warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        n_real = args.batch - n_synth
        k = n_real if args.v1 else int(rng.binomial(n_real, args.original_frac))
        draws = [(real[:n_orig], k), (real[n_orig:], n_real - k), (synth, n_synth)]
        parts = [crop_batch(pool, n, args.patch, rng) for pool, n in draws if n]
        img, tgt, wt, msk = (torch.cat(z).to(ctx.device) for z in list(zip(*parts))[:4])
        stretched = torch.zeros(len(img), dtype=torch.bool, device=ctx.device)
        if aug.stretch > 1 and teacher is not None:
            stretched[::2] = True
        keep = None  # the crops the teacher teaches: all but crowded renders, stretched and (--distill-crops) synthetic
        native = None  # those it teaches with its answers on the crops before augmentation (--teacher-view)
        extra = None  # ... those answers, and where it saw (not within NATIVE_MARGIN of the crop's edge)
        if teacher is not None:
            drawn = [i for i, (_, n) in enumerate(draws) if n]
            crops = [(i, j) for i, part in zip(drawn, parts) for j in part[4]]  # (draw, pool index) of each crop
            is_crowd = torch.tensor([i == 1 and crowded[j] for i, j in crops], device=ctx.device)  # draws[1]
            is_real = torch.tensor([i != 2 for i, _ in crops], device=ctx.device)  # draws[2]: the synthetic crops
            keep = ~is_crowd & ~stretched & (is_real if args.distill_crops == "real" else True)
            if args.teacher_view != "augmented":
                native = keep & (is_real if args.teacher_view == "native-real" else True)
                extra = img.new_zeros((len(img), 4, *img.shape[-2:]))
                if native.any():
                    m = NATIVE_MARGIN
                    extra[native, :3] = teacher_probs(img[native])
                    extra[native, 3, m:-m, m:-m] = 1.0
        if stretched.any():
            # The teacher merges long nuclei end to end, so the stretched crops (every other one, stretched by
            # the same law) learn from their labels alone, and the rest keep the teacher's answers unstretched.
            out = None
            for sel, cfg in ((stretched, replace(aug, stretch_p=1.0)), (~stretched, replace(aug, stretch=1.0))):
                half = augment_batch(
                    img[sel], tgt[sel], wt[sel], msk[sel], cfg, g, None if extra is None else extra[sel]
                )
                out = out or [a.new_empty((len(img), *a.shape[1:])) for a in half]
                for o, a in zip(out, half):
                    o[sel] = a
        else:
            out = augment_batch(img, tgt, wt, msk, aug, g, extra)
        img, tgt, wt, msk = out[:4]
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = net(img)
        if logits.shape[-1] != tgt.shape[-1]:  # valid mode: targets cropped to the output
            c = (tgt.shape[-1] - logits.shape[-1]) // 2
            tgt, wt, msk = (a[..., c : c + logits.shape[-2], c : c + logits.shape[-1]] for a in (tgt, wt, msk))
        loss = masked_loss(logits.float(), tgt, wt, msk)
        if keep is not None and keep.any():
            m = msk.float()  # where the labels teach (micronuclei masked out), so does the teacher
            target = logits.new_zeros(logits.shape, dtype=torch.float32)
            on_view = keep if native is None else keep & ~native
            if on_view.any():
                target[on_view] = teacher_probs(img[on_view])
            if native is not None and native.any():
                warped = out[4][native]
                m[native] = m[native] * (warped[:, 3] > 0.99)
                target[native] = warped[:, :3] / warped[:, :3].sum(1, keepdim=True).clamp_min(1e-6)
            target, m = target[keep], m[keep]
            log_student = torch.log_softmax(logits[keep].float(), 1)
            kl = (target * (target.clamp_min(1e-8).log() - log_student)).sum(1)
            kl = (kl * m).sum() / m.sum().clamp_min(1.0)
            loss = loss + args.distill * kl
            kl_ema = kl.item() if kl_ema is None else 0.95 * kl_ema + 0.05 * kl.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the ranks here
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()  # rank 0's batches in the log
        if step % 25 == 0:
            log(
                f"step {step} t={elapsed:.0f}s loss={ema:.4f} lr={lr:.2e} {step / max(elapsed, 1e-9):.2f} it/s"
                + ("" if kl_ema is None else f" kl={kl_ema:.4f}"),
                flush=True,
            )
        if step % args.eval_every == 0:
            # All ranks reach this step together; only rank 0 evaluates and writes, the others wait for it in
            # the next step's collectives. Each rank's data stream goes into the checkpoint for --resume.
            rngs = ddp.gather((rng.bit_generator.state, g.get_state()), ctx) if args.checkpoint else []
            if ctx.main:
                sel, ap = score(model)
                history.append(entry(step, elapsed, ema, sel, ap))
                report(f"  eval step {step}", sel, ap)
                if sel >= best:
                    best, best_state = sel, {k: v.clone() for k, v in model.state_dict().items()}
            if ctx.main and args.checkpoint:
                state = {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "best_state": best_state,
                    "best": best,
                    "step": step,
                    "ema": ema,
                    "seconds": time.time() - t_train,
                    "history": json.dumps(history),
                    "rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": g.get_state(),
                    "world_size": ctx.world,
                }
                if ctx.distributed:
                    state["rank_rngs"] = json.dumps([s for s, _ in rngs])
                    state["rank_torch_rngs"] = [t for _, t in rngs]
                torch.save(state, f"{args.checkpoint}.part")
                Path(f"{args.checkpoint}.part").replace(args.checkpoint)
    ddp.sync_buffers(model, ctx)  # every rank ends with rank 0's BatchNorm statistics, as the model file has
    if args.dump_weights:
        dump_state(model, args.dump_weights / f"rank{ctx.rank}.safetensors")
    if ctx.main:  # rank 0: the final evaluation, the selection of the best step and the model file
        sel, ap = score(model)
        history.append(entry(step, time.time() - t_train, ema, sel, ap))
        report(f"final step {step}", sel, ap)
        if sel >= best:
            best, best_state = sel, model.state_dict()
        model.load_state_dict(best_state)
        data, selected_on = describe_data(args)
        info = ModelInfo(
            config=config,
            diameter=DIAMETER,
            name="bundled",
            mask_threshold=args.mask_threshold,
            provenance={
                "recipe": "recipes/train_bundled.py",
                "args": {k: str(v) for k, v in vars(args).items() if k != "data"},
                "processes": ctx.world,
                "init": str(args.init) if args.init else None,
                "data": data,
                "selected_on": selected_on,
                "val_ap50": next(h["val_ap50"] for h in history if h["select"] == round(best, 4)),
                "steps": step,
                "train_seconds": round(time.time() - t_train),
                "date": date.today().isoformat(),
                "history": history,
            },
        )
        save_model(model, info, args.out)
        print(json.dumps({"best_select": best, "steps": step, "out": str(args.out)}), flush=True)
    ddp.barrier(ctx)  # the other ranks exit only once the model file is written
    ddp.teardown(ctx)


def describe_data(args) -> tuple[list[str], str]:
    """The model file's provenance: what the run trained on, and what it selected on."""
    data = [] if args.no_real else ["mnfinder/train (30 images, gold)"]
    if args.v1:
        data.append(f"synthetic x{args.synth} (napari_unet.core.synth, default style, 16-34 px)")
    else:
        if not args.no_real:
            extra = f", with outliers, dim nuclei up to {args.dim_max:g}x" if args.outliers else ""
            extra += f", {args.defocus:g} of them defocused" if args.defocus else ""
            extra += f", {args.crowd:g} of them crowded" if args.crowd else ""
            extra += f" ({args.crowd_seamless:g} of those seamless)" if args.crowd and args.crowd_seamless else ""
            data.append(
                f"mnfinder/train x{args.variants} hard-case renderings (napari_unet.core.appearance.perturb{extra})"
            )
        seam = "" if args.seam == (1.0, 1.0) else f", seam {args.seam[0]:g}-{args.seam[1]:g}"
        data.append(f"synthetic x{args.synth} (napari_unet.core.synth.WIDE, 8-80 px{seam})")
    if args.no_real:
        return data, f"synthetic val x{args.synth_val} AP@0.5"
    return data, "mnfinder/val AP@0.5" if args.v1 else "mean of mnfinder/val and wide synthetic val AP@0.5"


if __name__ == "__main__":
    main()
