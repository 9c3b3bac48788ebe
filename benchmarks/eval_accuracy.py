"""Accuracy benchmark: instance-segmentation AP of a method on the bundled evaluation sets.

Usage::

    python benchmarks/eval_accuracy.py [--method classical|classical_log|unet] [--model PATH]
                                       [--sets mnfinder_val,bbbc007,synthetic] [--per-image] [--jitter]
                                       [--errors]

Prints a markdown table (one row per data set) with AP@0.5 aggregated over the data set (sum of
TP, FP and FN over its images), the mean of the per-image AP@0.5, AP@0.75 and F1@0.5 (both
aggregated) and the segmentation time. ``evaluate`` can also be imported and called with any
``segment_fn(image) -> labels``. ``--jitter`` (unet) adds AP@0.5 at each image's estimated diameter x
0.96-1.04 and their mean (`jittered`), the figure to compare two models by. ``--errors`` adds what happened
to the true objects that were not matched (merged, split, missed, outline) and the false objects
(`napari_unet.core.metrics.error_kinds`), summed over each set.

Data sets (``NAPARI_UNET_DATA`` overrides the data folder, by default ``<repo>/../shared/data``):

* ``mnfinder_val`` / ``mnfinder_train``: ``mnfinder/{val,train}/images/NAME.tif`` with gold
  labels in ``../nuclei/NAME.tif``. Micronuclei (``../micronuclei/NAME.tif``) are not in the nuclei
  labels: predicted objects with more than half of their area on a micronucleus are ignored.
* ``bbbc007``: ``bbbc007/NAME.tif`` with silver labels ``NAME_labels.tif``.
* ``synthetic``: ``napari_unet.core.synth.synth_dataset(n=8, shape=(384, 384), seed=10_000)``;
  ``synthetic_seam``: the same with v2.1's dark seam between touching nuclei (``synth.WIDE.seam``, as on real
  labels; the seam's draw moves the later draws of each image, so its noise differs too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python benchmarks/eval_accuracy.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from napari_unet.core.metrics import ERROR_KINDS, Matching, aggregate, error_kinds, match_instances  # noqa: E402

DEFAULT_SETS = ("mnfinder_val", "bbbc007", "synthetic")
ALL_SETS = ("mnfinder_val", "mnfinder_train", "bbbc007", "synthetic", "synthetic_seam")

SegmentFn = Callable[[np.ndarray], np.ndarray]
#: Factors on each image's estimated diameter for `jittered`.
JITTER = (0.96, 0.98, 0.99, 1.0, 1.01, 1.02, 1.04)


@dataclass
class Sample:
    """One evaluation image.

    Attributes:
        name: Identifier of the image (file stem or ``synthetic_<i>``).
        image: The 2-D image as loaded (native dtype).
        labels: Ground-truth instance labels.
        ignore: Optional mask; predicted objects mostly inside it are ignored when matching.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray | None = None


def data_dir() -> Path:
    """Folder holding the shared data: ``$NAPARI_UNET_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("NAPARI_UNET_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def _imread(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _load_mnfinder(split: str, root: Path) -> list[Sample]:
    base = root / "mnfinder" / split
    samples = []
    for img_path in sorted((base / "images").glob("*.tif")):
        mn_path = base / "micronuclei" / img_path.name
        ignore = _imread(mn_path) > 0 if mn_path.exists() else None
        samples.append(
            Sample(
                name=img_path.stem,
                image=_imread(img_path),
                labels=_imread(base / "nuclei" / img_path.name),
                ignore=ignore,
            )
        )
    return samples


def _load_bbbc007(root: Path) -> list[Sample]:
    base = root / "bbbc007"
    samples = []
    for lab_path in sorted(base.glob("*_labels.tif")):
        img_path = lab_path.with_name(lab_path.name.replace("_labels.tif", ".tif"))
        samples.append(Sample(img_path.stem, _imread(img_path), _imread(lab_path)))
    return samples


def _load_synthetic(seam: bool = False) -> list[Sample]:
    from napari_unet.core.synth import WIDE, SynthStyle, synth_dataset  # lazy: written separately

    pairs = synth_dataset(n=8, shape=(384, 384), seed=10_000, style=SynthStyle(seam=WIDE.seam) if seam else None)
    return [Sample(f"synthetic_{i}", img, lab) for i, (img, lab) in enumerate(pairs)]


def load_dataset(name: str, root: Path | None = None) -> list[Sample]:
    """Load one named evaluation set.

    Args:
        name: One of ``mnfinder_val``, ``mnfinder_train``, ``bbbc007``, ``synthetic``, ``synthetic_seam``.
        root: Data folder; defaults to :func:`data_dir`.

    Returns:
        The samples, sorted by name (file-based sets).

    Raises:
        KeyError: For an unknown name.
        FileNotFoundError: If a file-based set has no images under ``root``.
        ImportError: For ``synthetic`` when ``napari_unet.core.synth`` is missing.
    """
    root = data_dir() if root is None else Path(root)
    if name == "mnfinder_val":
        samples = _load_mnfinder("val", root)
    elif name == "mnfinder_train":
        samples = _load_mnfinder("train", root)
    elif name == "bbbc007":
        samples = _load_bbbc007(root)
    elif name in ("synthetic", "synthetic_seam"):
        return _load_synthetic(seam=name == "synthetic_seam")
    else:
        raise KeyError(f"unknown data set {name!r}; choose from {', '.join(ALL_SETS)}")
    if not samples:
        raise FileNotFoundError(f"no images for {name!r} under {root}")
    return samples


def evaluate(
    segment_fn: SegmentFn,
    datasets: Iterable[str] | Mapping[str, Sequence[Sample]],
    *,
    root: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Segment every image of the given data sets and score the result.

    Args:
        segment_fn: ``segment_fn(image) -> labels``, an integer instance-label image of the same
            shape as ``image``.
        datasets: Data-set names (see :func:`load_dataset`), or a mapping from a name to its
            samples (anything with ``.image``, ``.labels`` and optionally ``.ignore``).
        root: Data folder for named sets; defaults to :func:`data_dir`.

    Returns:
        ``{name: stats}`` where ``stats`` has ``n_images``, ``n_objects`` (ground truth),
        ``ap50`` (aggregate: sum TP / sum (TP + FP + FN) over images), ``mean_ap50`` (mean of
        per-image AP@0.5), ``ap75`` and ``f1_50`` (aggregate), ``n_ignored`` (predictions dropped
        by the ignore mask), ``seconds`` (total time in ``segment_fn``), ``match50`` and
        ``match75`` (the aggregate :class:`Matching`), ``errors`` (`error_kinds` summed over the images)
        and ``per_image`` (a list of dicts with ``name``, ``n_objects``, ``n_pred``, ``ap50``, ``ap75``,
        ``errors``, ``seconds``).
    """
    if isinstance(datasets, Mapping):
        sets: dict[str, Sequence[Any]] = dict(datasets)
    else:
        sets = {name: load_dataset(name, root) for name in datasets}

    results: dict[str, dict[str, Any]] = {}
    for name, samples in sets.items():
        m50: list[Matching] = []
        m75: list[Matching] = []
        per_image = []
        errors = dict.fromkeys(ERROR_KINDS, 0)
        total = 0.0
        for i, s in enumerate(samples):
            t0 = time.perf_counter()
            pred = np.asarray(segment_fn(s.image))
            dt = time.perf_counter() - t0
            total += dt
            ignore = getattr(s, "ignore", None)
            a = match_instances(s.labels, pred, 0.5, ignore=ignore)
            b = match_instances(s.labels, pred, 0.75, ignore=ignore)
            m50.append(a)
            m75.append(b)
            kinds = error_kinds(s.labels, pred, ignore=ignore)
            errors = {k: errors[k] + kinds[k] for k in ERROR_KINDS}
            per_image.append(
                {
                    "name": getattr(s, "name", str(i)),
                    "n_objects": a.n_true,
                    "n_pred": a.n_pred,
                    "ap50": a.ap,
                    "ap75": b.ap,
                    "errors": kinds,
                    "seconds": dt,
                }
            )
        if not samples:
            continue
        agg50, agg75 = aggregate(m50), aggregate(m75)
        results[name] = {
            "n_images": len(samples),
            "n_objects": agg50.n_true,
            "ap50": agg50.ap,
            "mean_ap50": float(np.mean([m.ap for m in m50])),
            "ap75": agg75.ap,
            "f1_50": agg50.f1,
            "n_ignored": agg50.n_ignored,
            "seconds": total,
            "match50": agg50,
            "match75": agg75,
            "errors": errors,
            "per_image": per_image,
        }
    return results


def jittered(
    segment_at: Callable[[np.ndarray, float | None], Any],
    datasets: Mapping[str, Sequence[Any]],
    factors: Sequence[float] = JITTER,
) -> dict[str, list[float]]:
    """AP@0.5 of each set with every image segmented at its estimated diameter times each factor.

    One AP@0.5 of the 232 mnfinder val nuclei moves by up to +-0.015 when the diameter moves by 1-2 %
    (benchmarks/RESULTS.md, "Defocus"): as much as two candidate models differ. The mean over the
    factors takes that noise out of a comparison.

    Args:
        segment_at: ``segment_at(image, diameter)`` -> a `SegmentResult`; diameter None: estimated.
        datasets: ``{name: samples}`` as `evaluate` takes them.
        factors: Multipliers of each image's estimate.

    Returns:
        ``{name: [AP@0.5 at each factor]}``, aggregated over the set's images as in `evaluate`.
    """
    out = {}
    for name, samples in datasets.items():
        first = [segment_at(s.image, None) for s in samples]  # at the estimate: the factor 1's labels too
        out[name] = [
            aggregate(
                [
                    match_instances(
                        s.labels,
                        (r if f == 1 else segment_at(s.image, r.diameter * f)).labels,
                        0.5,
                        ignore=getattr(s, "ignore", None),
                    )
                    for s, r in zip(samples, first)
                ]
            ).ap
            for f in factors
        ]
    return out


def format_table(results: Mapping[str, Mapping[str, Any]], method: str = "") -> str:
    """Render :func:`evaluate` results as a markdown table with its footnote.

    Args:
        results: The dictionary returned by :func:`evaluate`.
        method: Optional method name for the caption.

    Returns:
        The markdown text.
    """
    lines = []
    if method:
        lines.append(f"Method: `{method}`\n")
    lines += [
        "| dataset | n images | n objects | AP@0.5 | mean AP@0.5 (per image) | AP@0.75 | F1@0.5 | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['n_images']} | {r['n_objects']} | {r['ap50']:.3f} "
            f"| {r['mean_ap50']:.3f} | {r['ap75']:.3f} | {r['f1_50']:.3f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "AP@t = TP / (TP + FP + FN), objects matched one-to-one at IoU > t. AP@0.5, AP@0.75 and "
        "F1@0.5 are data-set level (TP, FP, FN summed over images); mean AP@0.5 averages the "
        "per-image values. seconds: total segmentation time.",
    ]
    if any(name.startswith("mnfinder") for name in results):
        n_ign = sum(r["n_ignored"] for n, r in results.items() if n.startswith("mnfinder"))
        lines.append(
            "mnfinder: scored against the nuclei labels only; predicted objects with more than "
            "50 % of their area on a labelled micronucleus are ignored (neither TP nor FP; "
            f"{n_ign} ignored here)."
        )
    if "bbbc007" in results:
        lines.append(
            "bbbc007: silver labels, close to an Otsu + watershed result; a sanity check, not a human ground truth."
        )
    return "\n".join(lines)


def _classical_fn(method: str) -> SegmentFn:
    from napari_unet.core.classical import classical_segment

    if method == "classical_log":
        return partial(classical_segment, log_threshold=True)
    return classical_segment


def _unet_segment_at(model: str | None, merge_cuts: bool = True, min_score: float | None = None):
    """``segment_at(image, diameter)`` -> `SegmentResult` with the U-Net, loaded once; diameter None: estimated."""
    import napari_unet  # lazy: heavy, and written separately

    net = napari_unet.load_model(model or "bundled")
    extra = {} if min_score is None else {"min_score": min_score}

    def segment_at(image, diameter):
        return napari_unet.segment(image, net, diameter=diameter, merge_cuts=merge_cuts, return_result=True, **extra)

    return segment_at


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the markdown table.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--method",
        choices=("classical", "classical_log", "unet"),
        default="unet",
        help="classical: Otsu + watershed baseline; classical_log: the same with the Otsu "
        "threshold on log intensities; unet: napari_unet.segment (default: %(default)s)",
    )
    parser.add_argument("--model", default=None, help="model path (unet; default: bundled)")
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated, from {','.join(ALL_SETS)} (default: %(default)s)",
    )
    parser.add_argument("--per-image", action="store_true", help="also print per-image AP")
    parser.add_argument(
        "--errors", action="store_true", help="also print what became of the unmatched objects (`error_kinds`)"
    )
    parser.add_argument("--no-merge-cuts", action="store_true", help="unet: keep objects cut in two apart")
    parser.add_argument(
        "--min-score", type=float, help="unet: drop objects scored below (default: segment's; 0 keeps all)"
    )
    parser.add_argument(
        "--jitter",
        action="store_true",
        help="unet: also AP@0.5 at each image's estimated diameter x " + "/".join(map(str, JITTER)) + ", and the mean",
    )
    args = parser.parse_args(argv)
    if args.jitter and args.method != "unet":
        parser.error("--jitter measures the U-Net's size estimate: use it with --method unet")

    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL_SETS]
    if unknown:
        parser.error(f"unknown data set(s): {', '.join(unknown)}")

    datasets: dict[str, list[Sample]] = {}
    for name in names:
        try:
            datasets[name] = load_dataset(name)
        except (ImportError, FileNotFoundError) as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    if args.method == "unet":
        segment_at = _unet_segment_at(args.model, not args.no_merge_cuts, args.min_score)
        results = evaluate(lambda image: segment_at(image, None).labels, datasets)
    else:
        results = evaluate(_classical_fn(args.method), datasets)
    label = args.method + (f" ({args.model})" if args.method == "unet" and args.model else "")
    print(format_table(results, label))
    if args.per_image:
        for name, r in results.items():
            print(f"\n{name}:")
            for row in r["per_image"]:
                print(
                    f"  {row['name']}: n={row['n_objects']} pred={row['n_pred']} "
                    f"AP50={row['ap50']:.3f} AP75={row['ap75']:.3f} {row['seconds']:.2f}s"
                )
    if args.errors:
        print("\n| dataset | " + " | ".join(ERROR_KINDS) + " |")
        print("|---|" + "---:|" * len(ERROR_KINDS))
        for name, r in results.items():
            print(f"| {name} | " + " | ".join(str(r["errors"][k]) for k in ERROR_KINDS) + " |")
            if args.per_image:
                for row in r["per_image"]:
                    print(f"| {name}: {row['name']} | " + " | ".join(str(row["errors"][k]) for k in ERROR_KINDS) + " |")
        print(
            "True objects, each in one kind: matched at IoU > 0.5; merged (an object covers half of it and half of "
            "another); split (two objects cover a fifth of it or more each); missed (objects cover under half of it); "
            "outline (one object on it, IoU <= 0.5). false: objects covering under a fifth of every true object."
        )
    if args.jitter:
        print("\n| dataset | " + " | ".join(f"x{f}" for f in JITTER) + " | mean | sd |")
        print("|---|" + "---:|" * (len(JITTER) + 2))
        for name, aps in jittered(segment_at, datasets).items():
            cells = " | ".join(f"{a:.3f}" for a in aps)
            print(f"| {name} | {cells} | {np.mean(aps):.3f} | {np.std(aps, ddof=1):.3f} |")
        print("AP@0.5 with each image segmented at its estimated diameter x the factor (`jittered`).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
