"""The default channel of a multichannel image: is the nuclear stain chosen beside other stains?

Usage::

    python benchmarks/default_channel.py [--rows clean] [--kinds "membranes;FISH spots (sigma 0.8 px)"]

A user who opens a colour or multichannel image and clicks Segment gets the channel that
`normalize.nuclear_channel` takes for the nuclear stain. Each composite here is a real nuclear image
(mnfinder train, val and BBBC007, clean and rendered with each real row of `hard_cases.py` but the cytoplasm
and colour rows) beside one other stain rendered from its own labels (`napari_unet.core.appearance`):
a cytoplasm dark in the nuclei plus an empty channel, a whole-cell stain, membranes, FISH spots, foci inside
the nuclei, and markers of some of the nuclei (EdU, Ki67). It prints how many composites of each kind take
another channel. No model runs: a few seconds per row, minutes for rows of large images (rescaled 2x and 4x).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from eval_accuracy import load_dataset  # noqa: E402
from hard_cases import cases  # noqa: E402

from napari_unet.core import appearance as A  # noqa: E402
from napari_unet.core import normalize  # noqa: E402


def _cytoplasm(im, lab, rng, exclude: float):
    cyto = A.add_cytoplasm(np.zeros_like(im), lab, rng, level=1.0, exclude_nuclei=exclude, reach=1.0)
    return cyto * float(np.percentile(im, 99.8)) / max(float(cyto.max()), 1e-6)


#: kind -> the other channels, rendered from the nuclear image and its labels; the nuclear stain goes first
#: for the cytoplasm composite (as `hard_cases.py`'s colour row has it) and last for the others.
KINDS: dict[str, tuple[Callable, bool]] = {
    "cytoplasm dark in the nuclei + empty channel": (
        lambda im, lab, r: [_cytoplasm(im, lab, r, 1.0), np.zeros_like(im)],
        True,
    ),
    "whole-cell stain (over the nuclei too)": (lambda im, lab, r: [_cytoplasm(im, lab, r, 0.0)], False),
    "membranes": (lambda im, lab, r: [A.membrane_stain(im, lab, r)], False),
    "FISH spots (sigma 0.8 px)": (lambda im, lab, r: [A.spot_stain(im, lab, r, sigma=0.8)], False),
    "FISH spots (sigma 1.2 px)": (lambda im, lab, r: [A.spot_stain(im, lab, r, sigma=1.2)], False),
    "foci in the nuclei (sigma 1 px)": (lambda im, lab, r: [A.spot_stain(im, lab, r, sigma=1.0, inside=True)], False),
    "marker of 30 % of the nuclei, 2x": (lambda im, lab, r: [A.marker_stain(im, lab, r, 0.3, 2.0)], False),
    "marker of 15 % of the nuclei, 4x": (lambda im, lab, r: [A.marker_stain(im, lab, r, 0.15, 4.0)], False),
    "marker of 60 % of the nuclei, 1x": (lambda im, lab, r: [A.marker_stain(im, lab, r, 0.6, 1.0)], False),
}

SKIP = ("cytoplasm", "RGB", "synth")


def rows(which: str) -> dict[str, list]:
    """row name -> samples: the clean images of the three sets, and each real hard row of mnfinder val and
    BBBC007."""
    out = {"clean: mnfinder train": load_dataset("mnfinder_train")}
    for images in ("mnfinder_val", "bbbc007"):
        for name, (_, build) in cases(images).items():
            if not any(s in name for s in SKIP) and (which == "all" or which in name):
                out[f"{name}: {images}"] = build()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="all", help="only rows whose name holds this")
    p.add_argument("--kinds", default="", help='kinds separated by ";" (default: all)')
    args = p.parse_args(argv)
    kinds = {k: v for k, v in KINDS.items() if not args.kinds or k in args.kinds.split(";")}
    wrong = {k: {} for k in kinds}
    total = {k: 0 for k in kinds}
    t0 = time.perf_counter()
    for row, samples in rows(args.rows).items():
        for i, s in enumerate(samples):
            im = np.asarray(s.image, np.float32)
            im = im.mean(-1) if im.ndim == 3 else im
            lab = s.labels.astype(np.int32)
            for k, (render, first) in kinds.items():
                others = render(im, lab, np.random.default_rng([i, len(row), len(k)]))
                stack = np.stack([im, *others] if first else [*others, im])
                nuclear = 0 if first else len(others)
                total[k] += 1
                if normalize.nuclear_channel(stack, 0, len(stack)) != nuclear:
                    wrong[k][row] = wrong[k].get(row, 0) + 1
        print(f"# {row}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print("| second stain | composites | chosen wrong | rows with misses |")
    print("|---|---:|---:|---|")
    for k in kinds:
        misses = ", ".join(f"{r} {n}" for r, n in sorted(wrong[k].items(), key=lambda x: -x[1]))
        print(f"| {k} | {total[k]} | {sum(wrong[k].values())} | {misses} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
