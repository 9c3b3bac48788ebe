"""Fine-tune a U-Net on painted corrections: a generator that yields progress and returns the model.

The loop runs headless (no Qt): the napari widget wraps `train_iter` in a thread worker, the CLI and
`napari_unet.train_model` drain it. Stopping is closing the generator (or no longer iterating) at any
yield: the new weights live in a deep copy, so the starting model object and its file are untouched,
and nothing is saved.

The run has three parts: `_prepare` (targets at the model's scale, a held-out split, samplers, the
starting model's metrics), `_loop` (the steps) and `_finish` (the final check and the lineage). Saving
is the caller's: `napari_unet.api.train` saves the result as a version.

Per step: crops centred on trusted pixels (see `trainingdata`), joint augmentation on the training
device, a masked boundary-weighted loss on the user's pixels, and guards against forgetting what the
model knew: replay of fully labelled crops of its original domain (real and synthetic, weighted 2x
the user's loss) and a weight-space ensemble with the starting model (WiSE-FT) by default; a
forgetting budget (keep less of the change when a probe of the original domain says so) on request. BatchNorm statistics and dropout are frozen (the network
stays in eval mode): a handful of painted crops would wreck the running statistics. NaN, inf or a sudden loss explosion rolls the
weights back to the last good snapshot and halves the learning rate, and an event says so.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import versions
from .augment import augment_batch
from .device import autocast_dtype, keep_freed_memory, select_device
from .errors import InputError
from .finetune import (
    RollbackGuard,
    TrainSettings,
    blend,
    evaluate_pixels,
    forgetting_probe,
    keep_within_budget,
    preview_probabilities,
    probe_reference,
    probe_spec,
)
from .losses import masked_loss
from .model import UNet
from .normalize import without_overlays
from .trainingdata import (
    CropSampler,
    check_inputs,
    data_hashes,
    diameters_per_image,
    hold_out,
    model_diameter,
    painted_diameter,
    prepare_image,
    replay_pool,
    validation_crops,
)

DEFAULT_SECONDS = 60.0
#: The confidence floor a fine-tuned version carries (`ModelInfo.min_score`): none. A fine-tuned model is less
#: confident than the floor tuned on the bundled model assumes, and dropping its doubted objects cost the
#: simulated annotator 0.023-0.033 AP on BBBC007 (benchmarks/RESULTS.md, "Simulated annotator").
TUNED_MIN_SCORE = 0.0
#: The outline trim a fine-tuned version carries (`ModelInfo.outline_level`): none. It learned the outlines the
#: user painted, which the trim of the bundled model's halo would only move.
TUNED_OUTLINE_LEVEL = 0.0
__all__ = ["TrainEvent", "TrainResult", "TrainSettings", "train_iter"]


@dataclass
class TrainEvent:
    """Progress of a training run.

    Step-0 events come before the first update (preparation, the starting model's held-out metric);
    their `loss` is nan.
    """

    step: int
    total_steps: int | None
    loss: float  # supervised loss on the user's trusted pixels at this step
    lr: float
    steps_per_s: float
    eta_s: float | None
    elapsed_s: float
    val_metric: float | None = None  # balanced pixel accuracy on held-out trusted pixels, when computed
    preview: np.ndarray | None = None  # uint8 (H, W) foreground probability of the preview region
    message: str = ""
    smoothed_loss: float | None = None  # running mean of `loss`, for plots


@dataclass
class TrainResult:
    """The outcome: the new model (eval mode, CPU, `.info` with lineage) and where it was saved (None: not saved)."""

    model: UNet
    path: Path | None
    name: str
    metrics: dict


def train_iter(
    images,
    labels,
    masks=None,
    *,
    init: str | os.PathLike | UNet = "bundled",
    seconds: float | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    preview: np.ndarray | None = None,
    preview_every: float = 3.0,
    diameter: float | list[float | None] | None = None,
    scribbles: bool = False,
    preview_range: tuple[float, float] | None = None,
    **settings,
) -> Generator[TrainEvent, None, TrainResult]:
    """Fine-tune a model on corrected images; a generator of `TrainEvent` returning a `TrainResult`.

    Nothing is saved here (see `napari_unet.api.train`, which saves the result as a version).

    Args:
        images: A 2D image or a list of them (one plane of a stack is the caller's choice).
        labels: For each image, instance labels (0 = background, 1, 2, ... = objects), or with
            ``scribbles=True`` a scribble layer: 0 = not painted, 1 = background stroke, 2 or more =
            a stroke inside an object (see `napari_unet.core.trainingdata`).
        masks: For each image, the trusted pixels (nonzero = painted or reviewed by the user); the
            loss ignores every other pixel. None trusts every pixel (or every stroke).
        init: ``"bundled"``, ``"current"``, a model file, a saved version's name, or a `UNet`.
            Never modified: training runs on a deep copy.
        seconds: Time budget for preparation and training (the final check follows).
        steps: Step budget; with `seconds` too, whichever ends first. Neither: 60 seconds.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a `torch.device`.
        seed: Seeds crops, augmentation and the held-out split (training is deterministic for a
            step budget on one device).
        preview: A raw 2D image region; every `preview_every` seconds (stretched so previews take
            at most ~20 % of the time) an event carries its foreground probability (uint8, 255 = 1).
        preview_every: Seconds between previews.
        diameter: Object diameter in px (one for all images, or one per image); None: the median of
            the painted objects, or the model's estimate when there are none (scribbles).
        scribbles: Read `labels` as scribbles (above).
        preview_range: Intensity range (low, high) mapping the preview to [0, 1]; None uses the
            region's own percentiles.
        **settings: Fields of `TrainSettings` (lr, batch, patch, replay, interpolate, ...).

    Yields:
        `TrainEvent` after preparation (step 0), after every step, with `val_metric` every
        `val_every` seconds and at the end, with `preview` when due, and with a `message` on
        rollbacks and milestones.

    Returns:
        `TrainResult` (``path`` None); its `metrics` hold the held-out metric before and after, the
        forgetting probe, steps, seconds and device.

    Raises:
        InputError: bad images, labels, masks, budget or diameter (one plain sentence).
    """
    seconds, steps = check_budget(seconds, steps)
    run = yield from _prepare(images, labels, masks, init, seconds, steps, device, seed, diameter, scribbles, settings)
    run.preview, run.preview_every, run.preview_range = preview, preview_every, preview_range
    yield from _loop(run)
    return (yield from _finish(run))


def check_budget(seconds: float | None, steps: int | None) -> tuple[float | None, int | None]:
    """The budget as given, or 60 s when neither is; InputError unless finite and positive."""
    if seconds is None and steps is None:
        return DEFAULT_SECONDS, None
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise InputError(f"the time budget must be a finite number of seconds above 0, got {seconds}")
    if steps is not None and not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps > 0):
        raise InputError(f"the step budget must be a whole number above 0, got {steps}")
    return (None if seconds is None else float(seconds)), (None if steps is None else int(steps))


@dataclass
class _Run:
    """What `_prepare` builds and `_loop` / `_finish` use."""

    cfg: TrainSettings
    seconds: float | None
    steps: int | None
    t0: float
    rng: np.random.Generator
    items: list
    held_out: bool
    sampler: CropSampler
    val: tuple | None
    replayer: CropSampler | None
    start: UNet
    info0: object
    parent: dict
    hashes: dict
    net: UNet
    dev: torch.device
    amp: torch.dtype | None
    opt: torch.optim.Optimizer
    scaler: object
    gen: torch.Generator
    probe: object
    reference: float | None
    before: dict | None
    device_text: str
    seed: int
    scribbles: bool
    preview: np.ndarray | None = None
    preview_every: float = 3.0
    preview_range: tuple[float, float] | None = None
    step: int = 0
    rate: float = 0.0
    guard: RollbackGuard | None = None
    extra: dict = field(default_factory=dict)


def _prepare(images, labels, masks, init, seconds, steps, device, seed, diameter, scribbles, settings):
    """Check the inputs, build targets, samplers and the model copy; yields the step-0 events."""
    cfg = TrainSettings.from_kwargs(settings)
    pairs = check_inputs(images, labels, masks)
    hashes = data_hashes(images, labels, masks)
    if scribbles and not any((lab > 0).any() for _, lab, _ in pairs):
        raise InputError("the scribbles are empty: paint 1 for background and 2+ inside objects")
    ds = diameters_per_image(diameter, len(pairs))
    start, info0, parent = versions.resolve_init(init)
    dev = select_device(device)
    keep_freed_memory()
    amp = autocast_dtype(dev) if cfg.precision == "auto" and dev.type in ("cpu", "cuda") else None
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    yield TrainEvent(0, steps, math.nan, 0.0, 0.0, seconds, 0.0, message=f"preparing {len(pairs)} image(s)")

    # Data: targets at the model's scale, a held-out split, crop samplers.
    items = []
    for (img, lab, msk), d in zip(pairs, ds):
        img, _ = without_overlays(img)  # as segmenting does
        d = d or painted_diameter(lab, msk, scribbles) or model_diameter(start, img, info0, dev)
        kw = {"model_diameter": info0.diameter, "normalization": info0.normalization, "w0": cfg.w0, "sigma": cfg.sigma}
        items.append(prepare_image(img, lab, msk, diameter=d, scribbles=scribbles, **kw))
    if not any(it.train_mask.any() for it in items):
        raise InputError("nothing to learn from: no trusted pixel (check the masks / scribbles)")
    held_out = hold_out(items, cfg.holdout, max(32, round(3 * info0.diameter)), rng)
    sampler = CropSampler(items, cfg.patch, rng, cfg.crop_bias)
    val = validation_crops(items, 64, 32, 16, rng)
    replayer = None
    if cfg.replay:
        pool = replay_pool(cfg.replay_synthetic, 192, info0.diameter, seed, cfg.replay_real)
        replayer = CropSampler(pool, cfg.patch, rng, 0.0)

    # The model: a deep copy in eval mode (BatchNorm statistics and dropout frozen).
    net = copy.deepcopy(start).to(dev).eval().requires_grad_(True)
    net.info = info0
    probe = forgetting_probe(cfg.probe_images, info0.diameter)
    before = evaluate_pixels(net, val, dev, amp)
    # The probe's AP of the lineage's root (the model before any fine-tuning), carried along in provenance.
    reference = probe_reference(info0, cfg.probe_images) if probe else None
    if probe and reference is None:
        reference = probe(net, dev)
    where = f"{dev.type} ({torch.get_num_threads()} threads, " if dev.type == "cpu" else f"{dev} ("
    device_text = where + {torch.bfloat16: "bf16)", torch.float16: "fp16)", None: "fp32)"}[amp]
    run = _Run(
        cfg=cfg, seconds=seconds, steps=steps, t0=t0, rng=rng, items=items, held_out=held_out, sampler=sampler,
        val=val, replayer=replayer, start=start, info0=info0, parent=parent, hashes=hashes, net=net, dev=dev,
        amp=amp, opt=torch.optim.Adam(net.parameters(), lr=cfg.lr),
        scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
        gen=torch.Generator(device=dev).manual_seed(seed), probe=probe, reference=reference, before=before,
        device_text=device_text, seed=seed, scribbles=scribbles,
    )  # fmt: skip
    note = "" if held_out else "; too few trusted pixels to hold some out: validating on the training pixels"
    yield _event(run, math.nan, 0.0, val_metric=before and before["metric"], message=f"training on {device_text}{note}")
    return run


def _loop(run: _Run) -> Generator[TrainEvent, None, None]:
    """The steps, until the budget is spent or the guard gives up; closing the generator stops at once."""
    cfg, net, opt, dev, amp, scaler = run.cfg, run.net, run.opt, run.dev, run.amp, run.scaler
    guard = run.guard = RollbackGuard(net, opt, cfg)
    next_val = time.perf_counter() + cfg.val_every
    next_preview = time.perf_counter() + run.preview_every if run.preview is not None else math.inf
    preview_d = float(np.median([it.diameter for it in run.items]))
    last_t = time.perf_counter()
    while not guard.gave_up:
        progress = max((time.perf_counter() - run.t0) / run.seconds if run.seconds else 0.0,
                       run.step / run.steps if run.steps else 0.0)  # fmt: skip
        if progress >= 1.0:
            break
        lr = cfg.lr_at(run.step, progress, guard.lr_scale)
        for g in opt.param_groups:
            g["lr"] = lr
        img, tgt, wt, msk = run.sampler.sample(cfg.batch)
        n = img.shape[0]
        if run.replayer is not None:
            r = run.replayer.sample(cfg.replay)
            img, tgt, wt, msk = (torch.cat([a, b]) for a, b in zip((img, tgt, wt, msk), r))
        img, tgt, wt, msk = (a.to(dev, non_blocking=True) for a in (img, tgt, wt, msk))
        img, tgt, wt, msk = augment_batch(img, tgt, wt, msk, cfg.augment, run.gen)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = net(img)
        loss_new = masked_loss(logits[:n], tgt[:n], wt[:n], msk[:n])
        loss = loss_new
        if run.replayer is not None:
            loss = loss + cfg.replay_weight * masked_loss(logits[n:], tgt[n:], wt[n:], msk[n:])
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        gnorm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip))
        value = float(loss_new.detach())
        run.step += 1
        # With loss scaling, inf gradients are the scaler's business (it skips the step).
        msg = guard.check(run.step, value, float(loss.detach()), scaler is not None or math.isfinite(gnorm))
        if msg:
            yield _event(run, value, lr, message=msg)
            continue
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        guard.healthy(run.step, value)
        now = time.perf_counter()
        dt = max(now - last_t, 1e-9)
        run.rate = 1 / dt if run.rate == 0 else 0.8 * run.rate + 0.2 / dt
        ev = _event(run, value, lr)
        if now >= next_val and run.val is not None:
            ev.val_metric = evaluate_pixels(net, run.val, dev, amp)["metric"]
            next_val = time.perf_counter() + cfg.val_every
        if now >= next_preview:
            ev.preview = preview_probabilities(net, run.preview, dev, run.info0, preview_d, run.preview_range)
            next_preview = time.perf_counter() + max(run.preview_every, 4 * (time.perf_counter() - now))
        last_t = time.perf_counter()
        yield ev


def _finish(run: _Run) -> Generator[TrainEvent, None, TrainResult]:
    """WiSE-FT (or the forgetting budget), the final check and the lineage; yields the "done" event."""
    cfg, net, dev, amp, guard, step = run.cfg, run.net, run.dev, run.amp, run.guard, run.step
    train_s = time.perf_counter() - run.t0
    # Weight-space ensemble with the starting model (WiSE-FT): keep `interpolate` of the change, or
    # less if the probe says the original domain suffers more than `max_forgetting` below the root's.
    kept, probe_after, reference = cfg.interpolate, None, run.reference
    if run.probe and cfg.max_forgetting > 0:
        fractions = [cfg.interpolate * 0.5**i for i in range(3)]
        kept, probe_after = keep_within_budget(net, run.start, fractions, lambda: run.probe(net, dev), reference,
                                               cfg.max_forgetting)  # fmt: skip
    elif cfg.interpolate < 1.0:
        blend(net, run.start, list(net.parameters()), cfg.interpolate)
    before, after = run.before, evaluate_pixels(net, run.val, dev, amp)
    if run.probe and probe_after is None:
        probe_after = run.probe(net, dev)
    improved = None if before is None else bool(after["metric"] >= before["metric"] - 1e-9)
    metrics = {
        "val_metric": "balanced pixel accuracy (background/interior/boundary) on "
        + ("held-out trusted pixels" if run.held_out else "the training pixels (too few to hold out)"),
        "held_out": run.held_out,
        "val_before": before and round(before["metric"], 5),
        "val_after": after and round(after["metric"], 5),
        "val_loss_before": before and round(before["loss"], 5),
        "val_loss_after": after and round(after["loss"], 5),
        "val_pixels": before and before["pixels"],
        "forgetting_probe": "AP@0.5 on synthetic images of the original domain, root of the lineage vs now",
        "probe_spec": probe_spec(cfg.probe_images) if run.probe else None,
        "probe_reference": reference,
        "probe_ap_after": probe_after,
        "forgetting": None if reference is None else round(reference - probe_after, 4),
        "kept": round(kept, 4),
        "steps": step,
        "rollbacks": guard.rollbacks,
        "stopped": "diverged" if guard.gave_up else "budget",
        "seconds": round(train_s, 2),
        "device": run.device_text,
        "diameters": [round(it.diameter, 2) for it in run.items],
        "improved": improved,
    }
    done = f"done: {step} steps in {train_s:.0f} s"
    if improved is not None:
        done += f", {'held-out' if run.held_out else 'training-pixel'} metric {before['metric']:.3f} -> {after['metric']:.3f}"
    if kept < cfg.interpolate:
        done += (f"; kept {100 * kept:.0f} % of the change, as more cost the original domain over "
                 f"{cfg.max_forgetting:.2f} AP (probe {reference:.3f} -> {probe_after:.3f})")  # fmt: skip
    yield _event(run, guard.ema or math.nan, 0.0, val_metric=after and after["metric"], message=done)

    model = net.cpu().eval().requires_grad_(False)
    vname = "unsaved-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    provenance = {
        "parent": run.parent,
        "data": run.hashes,
        "scribbles": bool(run.scribbles),
        "seed": run.seed,
        "budget": {"seconds": run.seconds, "steps": run.steps},
        "settings": cfg.to_dict(),
        "metrics": metrics,
        "improved": improved,
        "date": datetime.now().isoformat(timespec="seconds"),
        "engine": "napari_unet.core.train",
    }
    model.info = replace(
        run.info0, name=vname, provenance=provenance, min_score=TUNED_MIN_SCORE, outline_level=TUNED_OUTLINE_LEVEL
    )
    return TrainResult(model, None, vname, metrics)


def _event(run: _Run, loss: float, lr: float, *, val_metric=None, message: str = "") -> TrainEvent:
    elapsed = time.perf_counter() - run.t0
    eta = []
    if run.seconds is not None:
        eta.append(max(0.0, run.seconds - elapsed))
    if run.steps is not None and run.rate > 0:
        eta.append(max(0, run.steps - run.step) / run.rate)
    smoothed = run.guard.ema if run.guard is not None else None
    return TrainEvent(run.step, run.steps, float(loss), float(lr), float(run.rate), min(eta) if eta else None,
                      elapsed, val_metric=val_metric, message=message, smoothed_loss=smoothed)  # fmt: skip
