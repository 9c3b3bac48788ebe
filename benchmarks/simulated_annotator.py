"""Simulated annotator: the Cellpose 2.0 human-in-the-loop protocol, automated, plus a step profile.

    python benchmarks/simulated_annotator.py profile              # steps/s, augmentation share, kornia
    python benchmarks/simulated_annotator.py annotate --domain synthetic [--reg default]
    python benchmarks/simulated_annotator.py annotate --domain bbbc007
    python benchmarks/simulated_annotator.py regularizers         # which forgetting guard works
    python benchmarks/simulated_annotator.py all                  # everything above, markdown tables

Protocol, per round: the current model segments the training region; the annotator "paints" the
ground truth of the k worst objects there (missed, false or badly shaped: lowest best-IoU with the
other side), and every ground-truth object touching the painted area, so that painted regions hold
whole objects; the trusted mask is the painted area. The model is fine-tuned for S seconds on all
corrections so far, starting from the previous round's model (as the napari widget does), and
scored by AP@0.5 on a held-out region. Forgetting = the bundled model's AP@0.5 on mnfinder/val
(nuclei labels, micronuclei ignored) minus the fine-tuned model's.

Domains: ``synthetic``: synthetic nuclei inside bright, textured cytoplasm (a stain that also marks
the cytoplasm), an appearance the bundled model never saw; ``bbbc007``: the real BBBC007 images
(silver labels), even-numbered images for training, odd-numbered ones held out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core import train as engine  # noqa: E402
from napari_unet.core.instances import median_diameter  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances, object_ids, per_object_iou  # noqa: E402
from napari_unet.core.modelfile import save_model  # noqa: E402
from napari_unet.core.synth import SynthStyle, synth_nuclei  # noqa: E402
from napari_unet.core.train import train_iter  # noqa: E402
from napari_unet.core.trainingdata import replay_pool  # noqa: E402

#: Which objects the annotator looks at: "oracle" (worst by ground truth), "doubt" (lowest model
#: confidence first, what the Corrections widget's queue shows) or "random"; set by --policy.
POLICY = {"name": "oracle", "rng": np.random.default_rng(0)}

REGULARIZERS = {
    "none": {"replay": 0},
    "replay-synthetic": {"replay": 4, "replay_weight": 1.0, "replay_real": False},
    "replay2-real": {"replay": 2, "replay_weight": 0.5, "replay_real": True},
    "replay4-real": {"replay": 4, "replay_weight": 1.0, "replay_real": True},
    "replay2-real-w1": {"replay": 2, "replay_weight": 1.0, "replay_real": True},
    "replay2-real-lr3e-4": {"replay": 2, "replay_weight": 0.5, "replay_real": True, "lr": 3e-4},
    "root0.5": {"interpolate": 1.0, "_root": 0.5},  # WiSE-FT anchored to the bundled model, not the last round
    "wise1.0": {"interpolate": 1.0},  # the full fine-tuned weights (the default before WiSE-FT)
    "wise0.7": {"interpolate": 0.7},
    "previous": {"replay_weight": 0.5},  # the default until 2026-12-01 (WiSE-FT 0.5, replay weight 0.5)
    "wise+replay2-w1": {"replay": 2, "replay_weight": 1.0},  # WiSE-FT 0.5 (the default) with more replay
    "wise+replay4-w1": {"replay": 4, "replay_weight": 1.0},
    "wise+replay2-w2": {"replay": 2, "replay_weight": 2.0},  # = the default since 2026-12-01
    "wise+replay2-w2-half": {"replay": 2, "replay_weight": 2.0, "replay_synthetic": 15},  # half synthetic, as bundled
    "replay-crowded": {"replay_synthetic": 15, "_touching": True},  # default + 15 crowded synthetic replay images
    "guard": {"replay": 2, "replay_weight": 2.0, "probe_images": 8, "max_forgetting": 0.02},
    "default": {},
}


# -- data ---------------------------------------------------------------------------------------
CROWDED_STYLE = SynthStyle(diameter=(16.0, 34.0), density=(0.3, 0.55), touching=(0.4, 0.6))
CYTO_STYLE = SynthStyle(diameter=(18.0, 24.0), density=(0.12, 0.2), touching=(0.0, 0.2), snr=(15.0, 30.0),
                        haze=(0.0, 0.05), dtype="uint16")  # fmt: skip


def cytoplasm_image(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic nuclei, each inside a bright, textured, unlabelled cytoplasm (a domain shift)."""
    rng = np.random.default_rng(seed)
    img, lab = synth_nuclei(shape, rng=rng, style=CYTO_STYLE)
    d = median_diameter(lab) or 20.0
    cells = expand_labels(lab, distance=int(0.7 * d))
    cyto = (cells > 0) & (lab == 0)
    base = float(np.percentile(img, 5))
    nuc = float(np.median(img[lab > 0])) - base if lab.any() else 1000.0
    per_cell = rng.uniform(0.45, 0.8, cells.max() + 1)
    texture = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    texture = 1 + 0.6 * texture / (texture.std() + 1e-9)
    cyto_signal = ndi.gaussian_filter(cyto * per_cell[cells] * nuc, 1.5) * np.clip(texture, 0.2, None)
    noise = rng.normal(0.0, 0.04 * nuc, shape) * (cyto_signal > 0.05 * nuc)
    out = img.astype(np.float64) + (cyto_signal + noise) * (lab == 0)
    return np.clip(out, 0, 65535).astype(np.uint16), lab


def load_domain(name: str) -> tuple[list, list, float]:
    """(training region [(image, gt)], held-out region [(image, gt)], diameter)."""
    if name == "synthetic":
        train = [cytoplasm_image((320, 320), 1000 + i) for i in range(2)]
        held = [cytoplasm_image((256, 256), 2000 + i) for i in range(4)]
    elif name == "bbbc007":
        from eval_accuracy import load_dataset

        samples = load_dataset("bbbc007")
        pairs = [(s.image, s.labels.astype(np.int32)) for s in samples]
        train, held = pairs[0::2], pairs[1::2]
    else:
        raise SystemExit(f"unknown domain {name!r}")
    d = float(np.median([median_diameter(gt) for _, gt in train + held]))
    return train, held, d


def scored_set(name: str) -> list:
    """[(image, labels, ignore mask, true diameter)] of an evaluation set."""
    from eval_accuracy import load_dataset

    return [(s.image, s.labels.astype(np.int32), s.ignore, median_diameter(s.labels)) for s in load_dataset(name)]


def mnfinder_val() -> list:
    return scored_set("mnfinder_val")


def original_domain_sets() -> dict:
    return {name: scored_set(name) for name in ("mnfinder_train", "synthetic")}


# -- scoring ------------------------------------------------------------------------------------
def ap50(model, pairs, diameter) -> float:
    ms = [match_instances(gt, segment(img, model, diameter=diameter), 0.5) for img, gt in pairs]
    return aggregate(ms).ap


def ap_mnfinder(model, val) -> float:
    return aggregate(
        [match_instances(gt, segment(img, model, diameter=d), 0.5, ignore=ign) for img, gt, ign, d in val]
    ).ap


# -- the annotator ------------------------------------------------------------------------------
def paint_worst(gt: np.ndarray, pred: np.ndarray, painted: np.ndarray, k: int, order: list[int] | None = None) -> int:
    """Paint (add to `painted`, in place) whole GT objects around the k worst objects; return count.

    `order` None is the oracle: the k objects worst by ground truth. Otherwise the annotator may look only
    at the predicted objects of `order`, in that order (the model's doubt, or a random order), and paints
    the ground truth there: the objects under each, or erases a false positive.
    """
    true_ids, pred_ids = object_ids(gt), object_ids(pred)
    true_best, pred_best = per_object_iou(gt, pred)
    done_true = set(np.unique(gt[painted & (gt > 0)]).tolist())
    if order is None:
        cands = [(iou, "t", i) for i, iou in zip(true_ids, true_best) if i not in done_true and iou < 0.95]
        cands += [(iou, "p", i) for i, iou in zip(pred_ids, pred_best) if iou < 0.5 and not painted[pred == i].all()]
        cands.sort(key=lambda c: c[0])
    else:
        cands = [(rank, "p", i) for rank, i in enumerate(order) if not painted[pred == i].all()]
    count = 0
    for _, kind, i in cands:
        if count >= k:
            break
        region = ndi.binary_dilation((gt if kind == "t" else pred) == i, iterations=2)
        if kind == "t":
            region |= np.isin(pred, np.unique(pred[gt == i])) & (pred > 0)
        touching = set(np.unique(gt[region]).tolist()) - {0}
        region |= np.isin(gt, list(touching))
        new_true = touching - done_true
        if count + max(len(new_true), 1) > k:  # a hard cap: this group would overshoot the round's k
            continue
        painted |= region
        done_true |= new_true
        count += len(new_true) if touching else 1  # GT objects painted; erasing a pure false positive: one
    return count


def run_protocol(
    domain: str,
    reg: str,
    k: int,
    rounds: int,
    seconds: float | None,
    seed: int = 0,
    log=print,
    steps: int | None = None,
    save: Path | None = None,
) -> dict:
    if "_touching" in REGULARIZERS[reg]:  # synthetic replay images crowded with touching nuclei, this run only
        with mock.patch.object(engine, "replay_pool", partial(replay_pool, style=CROWDED_STYLE)):
            return _protocol(domain, reg, k, rounds, seconds, seed, log, steps, save)
    return _protocol(domain, reg, k, rounds, seconds, seed, log, steps, save)


def _protocol(domain, reg, k, rounds, seconds, seed, log, steps, save) -> dict:
    torch.manual_seed(seed)
    train, held, d = load_domain(domain)
    val = mnfinder_val()
    bundled = load_model("bundled")
    model = bundled
    ap0, mn0 = ap50(model, held, d), ap_mnfinder(model, val)
    rows = [{"round": 0, "objects": 0, "seconds": 0.0, "steps": 0, "ap": ap0, "forgetting": 0.0}]
    log(f"[{domain}/{reg}] diameter {d:.1f}px  round 0: held-out AP@0.5 {ap0:.3f}, mnfinder AP@0.5 {mn0:.3f}")
    painted = [np.zeros(gt.shape, bool) for _, gt in train]
    objects, total_s, total_steps, rates, val_metrics = 0, 0.0, 0, [], []
    for r in range(1, rounds + 1):
        per_image = [k // len(train) + (i < k % len(train)) for i in range(len(train))]
        for (img, gt), p, kk in zip(train, painted, per_image):
            res_seg = segment(img, model, diameter=d, return_result=True)
            if POLICY["name"] == "doubt":  # the objects the model believes least, first
                order = sorted(res_seg.scores, key=res_seg.scores.get)
            elif POLICY["name"] == "random":
                order = [int(i) for i in POLICY["rng"].permutation(sorted(res_seg.scores))]
            else:
                order = None
            objects += paint_worst(gt, res_seg.labels, p, kk, order)
        labels = [np.where(p, gt, 0) for (_, gt), p in zip(train, painted)]
        settings = {k: v for k, v in REGULARIZERS[reg].items() if not k.startswith("_")}
        gen = train_iter([im for im, _ in train], labels, painted, init=model, seconds=seconds, steps=steps, device="cpu",
                         diameter=d, seed=seed + r, **settings)  # fmt: skip
        t0 = time.perf_counter()
        res = drain(gen)
        total_s += time.perf_counter() - t0
        model, m = res.model, res.metrics
        if "_root" in REGULARIZERS[reg]:  # weight-space ensemble with the bundled model
            with torch.no_grad():
                for p0, p in zip(bundled.parameters(), model.parameters()):
                    p.lerp_(p0, 1.0 - REGULARIZERS[reg]["_root"])
        total_steps += m["steps"]
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            save_model(model, model.info, save / f"{domain}-{reg}-s{seed}-r{r}.safetensors")
        rates.append(m["steps"] / max(m["seconds"], 1e-9))
        val_metrics.append((m["val_before"], m["val_after"]))
        ap, mn = ap50(model, held, d), ap_mnfinder(model, val)
        rows.append({"round": r, "objects": objects, "seconds": round(total_s, 1), "steps": total_steps, "ap": ap,
                     "forgetting": mn0 - mn})  # fmt: skip
        log(f"[{domain}/{reg}] round {r}: {objects} objects, {total_s:.0f} s, {total_steps} steps: held-out AP@0.5 "
            f"{ap:.3f} ({ap - ap0:+.3f}), mnfinder {mn:.3f} (forgetting {mn0 - mn:+.3f}), "
            f"val {m['val_before']}->{m['val_after']}, {rates[-1]:.2f} steps/s")  # fmt: skip
    # mnfinder/val is 3 images (232 nuclei: one nucleus is ~0.007 AP) and picked the bundled checkpoint, so the
    # final model is also scored on two larger original-domain sets: mnfinder/train (2,375 nuclei; the replay
    # crops come from it) and held-out synthetic images (seeds neither training nor replay used).
    wider = {}
    for name, data in original_domain_sets().items():
        a0, a1 = ap_mnfinder(bundled, data), ap_mnfinder(model, data)
        wider[name] = {"bundled": a0, "final": a1, "forgetting": a0 - a1}
        log(f"[{domain}/{reg}] final forgetting on {name}: {a0:.3f} -> {a1:.3f} ({a0 - a1:+.3f})")
    return {"domain": domain, "reg": reg, "k": k, "rounds": rounds, "seconds_per_round": seconds, "diameter": d,
            "mnfinder_bundled": mn0, "rows": rows, "steps_per_s": float(np.mean(rates)), "val": val_metrics,
            "final_forgetting": wider}  # fmt: skip


# -- step profile -------------------------------------------------------------------------------
def kornia_pipeline():
    import kornia.augmentation as K

    geo = K.AugmentationSequential(
        K.RandomHorizontalFlip(),
        K.RandomAffine(degrees=180.0, scale=(0.75, 1.33), shear=(-5.7, 5.7), padding_mode="reflection", p=1.0),
        K.RandomElasticTransform(kernel_size=(63, 63), sigma=(16.0, 16.0), alpha=(1.0, 1.0), p=0.7),
        data_keys=["input", "mask"],
    )
    inten = K.AugmentationSequential(
        K.RandomGamma(gamma=(0.6, 1.6), p=1.0),
        K.RandomContrast(contrast=(0.6, 1.4), p=1.0),
        K.RandomGaussianBlur((7, 7), (0.3, 1.5), p=0.3),
        K.RandomGaussianNoise(std=0.05, p=0.5),
    )
    return geo, inten


def profile(steps: int = 20, batch: int = 4, replay: int = 2, patch: int = 128, log=print) -> dict:
    """Time a training step's parts on the bundled network: crops, augmentation, forward/backward."""
    from napari_unet.core.augment import AugmentConfig, augment_batch
    from napari_unet.core.device import autocast_dtype
    from napari_unet.core.losses import masked_loss
    from napari_unet.core.trainingdata import CropSampler, replay_pool

    model = load_model("bundled")  # eval mode: BatchNorm frozen, as in fine-tuning
    pool = replay_pool(6, 192, 24.0, 0)
    sampler = CropSampler(pool, patch, np.random.default_rng(0), 0.9)
    n = batch + replay
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    geo, inten = kornia_pipeline()
    out = {}
    for amp_name, amp in (("bf16", autocast_dtype(torch.device("cpu"))), ("fp32", None)):
        if amp_name == "bf16" and amp is None:
            continue
        t_crop = t_aug = t_net = t_kornia = 0.0
        for i in range(steps + 2):
            t0 = time.perf_counter()
            img, tgt, wt, msk = sampler.sample(n)
            t1 = time.perf_counter()
            img, tgt, wt, msk = augment_batch(img, tgt, wt, msk, AugmentConfig(), g)
            t2 = time.perf_counter()
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                logits = model(img)
            loss = masked_loss(logits, tgt, wt, msk)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            i_k, m_k = geo(img, torch.stack([tgt.float(), msk.float()], 1))
            i_k = inten(i_k.clamp(0, 1))
            t4 = time.perf_counter()
            if i >= 2:  # warm-up
                t_crop, t_aug, t_net, t_kornia = t_crop + t1 - t0, t_aug + t2 - t1, t_net + t3 - t2, t_kornia + t4 - t3
        total = t_crop + t_aug + t_net
        out[amp_name] = {"steps_per_s": steps / total, "crop_share": t_crop / total, "aug_share": t_aug / total,
                         "aug_ms": 1e3 * t_aug / steps, "kornia_ms": 1e3 * t_kornia / steps,
                         "net_ms": 1e3 * t_net / steps}  # fmt: skip
        log(f"profile {amp_name}: {out[amp_name]}")
    out["batch"], out["patch"], out["threads"] = f"{batch}+{replay}", patch, torch.get_num_threads()
    return out


def alignment() -> dict:
    """Fraction of pixels where the nearest-resampled targets agree with the bilinear image (a y-ramp).

    Measured away from bin edges and from padding, for our `augment_batch` and for kornia.
    """
    from napari_unet.core.augment import AugmentConfig, augment_batch

    geo, _ = kornia_pipeline()
    size, n = 128, 6
    yy = torch.arange(size).float()[:, None].expand(size, size)
    img = (yy / size)[None, None].repeat(n, 1, 1, 1)
    bins = ((yy // 12) % 3)[None, None].repeat(n, 1, 1, 1)
    k_img, k_bins = geo(img, bins)
    cfg = AugmentConfig(gamma=(1, 1), contrast=(1, 1), brightness=0, blur_p=0, noise_p=0, poisson_p=0)
    o_img, o_bins, _, _ = augment_batch(img, bins[:, 0].long(), img[:, 0], torch.ones(n, size, size, dtype=torch.bool), cfg,
                                        torch.Generator().manual_seed(0))  # fmt: skip
    out = {}
    for name, a_img, a_bins in (("ours", o_img[:, 0], o_bins.float()), ("kornia", k_img[:, 0], k_bins[:, 0])):
        coord = a_img * size
        inner = ((coord % 12) > 1) & ((coord % 12) < 11) & (a_img > 0)
        out[name] = float((a_bins[inner] == (torch.floor(coord / 12) % 3)[inner]).float().mean())
    return out


# -- reporting ----------------------------------------------------------------------------------
def table(result: dict) -> str:
    lines = ["| round | objects painted | fine-tuning s (cum.) | steps | held-out AP@0.5 | Δ vs bundled | forgetting (mnfinder AP) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    ap0 = result["rows"][0]["ap"]
    for r in result["rows"]:
        lines.append(f"| {r['round']} | {r['objects']} | {r['seconds']:.0f} | {r['steps']} | {r['ap']:.3f} | "
                     f"{r['ap'] - ap0:+.3f} | {r['forgetting']:+.3f} |")  # fmt: skip
    return "\n".join(lines)


def policy_table(paths: list[Path]) -> str:
    """The policy comparison of issue 11 from `annotate --json` files: held-out AP gain after all rounds, per seed."""
    runs: dict = {}
    for path in paths:
        res = json.loads(Path(path).read_text())
        run = res["runs"][0]
        rows = run["rows"]
        runs.setdefault(run["domain"], {}).setdefault(res["policy"], {})[res["seed"]] = rows[-1]["ap"] - rows[0]["ap"]
    lines = ["| domain | policy | gain per seed | mean gain | of oracle | x random |", "|---|---|---|---:|---:|---:|"]
    for domain, by in sorted(runs.items()):
        mean = {p: float(np.mean(list(g.values()))) for p, g in by.items()}
        for policy in ("oracle", "doubt", "random"):
            if policy not in by:
                continue
            seeds = ", ".join(f"s{s} {g:+.3f}" for s, g in sorted(by[policy].items()))
            oracle = mean[policy] / mean["oracle"] if "oracle" in mean else float("nan")
            rand = mean[policy] / mean["random"] if "random" in mean else float("nan")
            lines.append(f"| {domain} | {policy} | {seeds} | {mean[policy]:+.3f} | {oracle:.0%} | {rand:.2f}x |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["profile", "annotate", "regularizers", "all", "policies"])
    p.add_argument("files", nargs="*", type=Path, help="policies: the annotate --json files to tabulate")
    p.add_argument("--domain", default="synthetic", choices=["synthetic", "bbbc007"])
    p.add_argument("--reg", default="default", choices=list(REGULARIZERS))
    p.add_argument("--k", type=int, default=10, help="objects painted per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--seconds", type=float, default=23.0, help="fine-tuning seconds per round (5 x 23 s + set-up <= 120 s)"
    )
    p.add_argument(
        "--steps", type=int, help="regularizers: a step budget per round instead of --seconds (fair under load)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="oracle", choices=["oracle", "doubt", "random"],
                   help="which objects the annotator looks at each round")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument("--save", type=Path, help="annotate: save each round's model in this folder")
    p.add_argument(
        "--regs", default="none,replay-synthetic,replay2-real,replay4-real", help="configurations to compare"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    POLICY.update(name=args.policy, rng=np.random.default_rng(args.seed))
    results: dict = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    print(f"# {results['machine']}, {results['date']}", flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.what in ("profile", "all"):
        results["profile"] = profile(log=log)
        results["alignment"] = alignment()
        log(f"label/image alignment after augmentation: {results['alignment']}")
    if args.what == "policies":
        print(policy_table(args.files))
        return
    results.update(policy=args.policy, seed=args.seed)
    if args.what == "annotate":
        res = run_protocol(args.domain, args.reg, args.k, args.rounds, args.seconds, args.seed, log, save=args.save)
        results["runs"] = [res]
        print(table(res))
    if args.what in ("regularizers", "all"):
        results["runs"] = []
        for reg in args.regs.split(","):
            budget = (None, args.steps) if args.steps else (args.seconds, None)
            results["runs"].append(
                run_protocol(args.domain, reg, args.k, args.rounds, budget[0], args.seed, log, budget[1])
            )
        print("| regulariser | final held-out AP@0.5 (Δ) | worst round Δ | forgetting (final / worst) | steps/s |")
        print("|---|---|---|---|---|")
        for res in results["runs"]:
            ap0 = res["rows"][0]["ap"]
            d = [r["ap"] - ap0 for r in res["rows"][1:]]
            f = [r["forgetting"] for r in res["rows"][1:]]
            print(f"| {res['reg']} | {res['rows'][-1]['ap']:.3f} ({d[-1]:+.3f}) | {min(d):+.3f} | "
                  f"{f[-1]:+.3f} / {max(f):+.3f} | {res['steps_per_s']:.2f} |")  # fmt: skip
    if args.what == "all":
        for dom in ("synthetic", "bbbc007"):
            res = run_protocol(dom, "default", args.k, args.rounds, args.seconds, args.seed, log)
            results["runs"].append(res)
            print(f"\n{dom} (default settings)\n" + table(res))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
