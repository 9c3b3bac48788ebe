"""A screen's folder of fields: one input at a time against two at a time, side by side in one run.

    python benchmarks/screen_speed.py [--rounds 2] [--diameter D]

`napari-unet segment FOLDER -o OUT -q` on the 44 real labelled images of `../shared/data` (mnfinder train, 30
fields of 0.26-1 Mpx; BBBC007, 14 of 0.16-0.2 Mpx), copied into one folder, each field's size estimated (or
`--diameter`). On a CPU the command segments two inputs at a time, each in a thread with half of torch's threads
(`cli._lanes`); "one at a time" is the same command with that set to 1. Rounds alternate the two; the labels of
both are compared file by file.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from napari_unet import cli  # noqa: E402
from napari_unet.core.device import describe, select_device  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"


def fields(folder: Path) -> list[Path]:
    """Copy the real fields into `folder`; returns their paths."""
    srcs = sorted((DATA / "mnfinder" / "train" / "images").glob("*.tif"))
    srcs += sorted(p for p in (DATA / "bbbc007").glob("*.tif") if not p.stem.endswith("_labels"))
    for p in srcs:
        shutil.copy(p, folder / p.name)
    return sorted(folder.iterdir())


def run(folder: Path, out: Path, lanes: int | None, diameter: float | None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    default = cli._lanes
    if lanes is not None:
        cli._lanes = lambda *a: lanes
    try:
        argv = ["segment", str(folder), "-o", str(out), "-q"] + (["--diameter", str(diameter)] if diameter else [])
        t = time.perf_counter()
        rc = cli.main(argv)
        seconds = time.perf_counter() - t
    finally:
        cli._lanes = default
    assert rc == 0
    return seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--diameter", type=float, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "plate").mkdir()
        images = fields(tmp / "plate")
        mpx = sum(np.prod(tifffile.TiffFile(f).series[0].shape) for f in images) / 1e6
        print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{describe(select_device('cpu'))}, {torch.get_num_threads()} threads")  # fmt: skip
        print(
            f"{len(images)} fields, {mpx:.1f} Mpx; diameter {'estimated' if args.diameter is None else args.diameter}"
        )
        run(tmp / "plate", tmp / "warm", 1, args.diameter)
        rows = []
        for r in range(args.rounds):
            one = run(tmp / "plate", tmp / "one", 1, args.diameter)
            two = run(tmp / "plate", tmp / "two", None, args.diameter)
            same = all(
                np.array_equal(tifffile.imread(a), tifffile.imread(tmp / "two" / a.name))
                for a in sorted((tmp / "one").iterdir())
            )
            rows.append((r + 1, one, two, same))
    print("\n| round | one at a time s (fields/s) | two at a time s (fields/s) | ratio | labels identical |")
    print("|---:|---:|---:|---:|---|")
    for r, one, two, same in rows:
        n = len(images)
        print(f"| {r} | {one:.1f} ({n / one:.2f}) | {two:.1f} ({n / two:.2f}) | {one / two:.2f}x | {same} |")


if __name__ == "__main__":
    main()
