"""GPU figures (issue 12): 2D segmentation Mpx/s, the block path on a 1 Gpx image, fine-tuning steps/s.

One prepared run for a lent GPU machine (the `device` tool; its image has torch but not zarr, dask or
ome-zarr, and cannot download, so their wheels travel in the ignored folder `.gpu_wheels`)::

    # here, once (Python 3.12 wheels of what the GPU image lacks; versions as installed here):
    pip download --dest .gpu_wheels --no-deps --python-version 3.12 --only-binary=:all: \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        zarr numcodecs google-crc32c donfig dask distributed partd locket tblib zict tornado ome-zarr \\
        ome-zarr-models pydantic-zarr pydantic pydantic-core annotated-types typing-inspection \\
        rangehttpserver Deprecated imagecodecs platformdirs
    # there (device run, carry [".gpu_wheels"]):
    pip install -q --no-index --no-deps .gpu_wheels/*.whl && PYTHONPATH=. PYTHONUNBUFFERED=1 \\
        python3 benchmarks/gpu.py --out $OUT

On this CPU, a tiny rehearsal of the same code paths::

    python benchmarks/gpu.py --device cpu --seg-sides 512 --gpx-side 2048 --block 1024 \\
        --tiles default,256:4 --clusters none,local:2 --train-steps 5 --out /tmp/gpu_rehearsal

Input: the bundled real sample (U2OS nuclei) mirror-tiled, diameter 30 px (as `big_data.py`), so nothing
outside the repository is needed. Sections stop starting once `--budget-s` has passed, so the run ends
inside one device call. Prints markdown tables and writes them, with the raw figures, under `--out`.
Targets (issue 12): >= 1 Gpx per minute for 2D segmentation on one H200, end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet import api  # noqa: E402
from napari_unet.core.device import describe, select_device  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, predict_plane  # noqa: E402

DIAMETER = 30.0
SAMPLE = ROOT / "napari_unet" / "resources" / "samples" / "nuclei2d_u2os.tif"


def canvas(side: int) -> np.ndarray:
    """The bundled real sample and its mirror images tiled to side x side (uint16), as `big_data.py`'s mosaic."""
    import tifffile

    sample = tifffile.imread(SAMPLE)
    return np.pad(sample, [(0, max(0, side - n)) for n in sample.shape], mode="symmetric")[:side, :side]


def make_zarr(path: Path, side: int, threads: int) -> None:
    """A side x side uint16 zarr (1024^2 chunks) of the mirror-tiled sample, written by `threads` threads."""
    import zarr

    tile = canvas(min(side, 4096))
    z = zarr.create_array(str(path), shape=(side, side), chunks=(1024, 1024), dtype="uint16")
    t = tile.shape[0]

    def put(yx):
        y, x = yx
        z[y : y + t, x : x + t] = tile[: min(t, side - y), : min(t, side - x)]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, [(y, x) for y in range(0, side, t) for x in range(0, side, t)]))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def best_of(fn, repeats: int, dev: torch.device) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def seg2d(model, dev, sides, variants, repeats) -> list[dict]:
    """End-to-end `segment` and probabilities-only Mpx/s on in-memory planes, for each (tile, batch)."""
    infer = InferenceModel.prepare(model, dev)
    scale = model.info.diameter / DIAMETER
    rows = []
    for side in sides:
        img = canvas(side)
        for tile, batch in variants:
            kw = dict(tile=tile, batch_size=batch)
            api.segment(img[:512, :512], model, device=dev, diameter=DIAMETER, **kw)  # warm-up
            n = [0]

            def run(img=img, n=n, kw=kw):
                n[0] = int(api.segment(img, model, device=dev, diameter=DIAMETER, **kw).max())

            def probs(img=img, kw=kw):
                lo, hi = percentile_range(img)
                drain(predict_plane(infer, normalize_plane(img, lo, hi), scale=scale, **kw))

            t_seg, t_prob = best_of(run, repeats, dev), best_of(probs, repeats, dev)
            mpx = side * side / 1e6
            rows.append(dict(side=side, tile=tile, batch=batch, seconds=t_seg, mpx_s=mpx / t_seg,
                             prob_seconds=t_prob, prob_mpx_s=mpx / t_prob, objects=n[0]))  # fmt: skip
            print(f"| {side}^2 | {tile or 'default'} / {batch or 'default'} | {t_seg:.2f} | {mpx / t_seg:.1f} | "
                  f"{t_prob:.2f} | {mpx / t_prob:.1f} | {n[0]} |", flush=True)  # fmt: skip
    return rows


def big(model, dev, side, block, clusters, tmp, threads, deadline) -> list[dict]:
    """The block path to an OME-Zarr on a side x side zarr plane, in this process or on a LocalCluster."""
    src = tmp / "in.zarr"
    t = time.perf_counter()
    make_zarr(src, side, threads)
    print(f"\n(input {side}^2 uint16 zarr written in {time.perf_counter() - t:.0f} s)\n", flush=True)
    print(f"| {side}^2 zarr -> OME-Zarr, block {block} | seconds (with start-up) | seconds of the run | Gpx/min | "
          "objects | client peak RSS (MB) |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
    import zarr

    img = zarr.open_array(str(src), mode="r")
    rows = []
    for cluster in clusters:
        if time.perf_counter() > deadline:
            print(f"| {cluster} | skipped: the time budget is spent | | | | |")
            continue
        out = tmp / "out.zarr"
        t = time.perf_counter()
        res = api.segment(img, model, device=dev, diameter=DIAMETER, output=out, block=block,
                          cluster=None if cluster == "none" else cluster, return_result=True)  # fmt: skip
        dt = time.perf_counter() - t
        gpx = side * side / 1e9
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(dict(cluster=cluster, side=side, block=block, seconds=dt, run_seconds=res.extra["seconds"],
                         gpx_per_min=gpx / dt * 60, objects=res.n_objects, client_peak_mb=peak))  # fmt: skip
        print(f"| {cluster} | {dt:.1f} | {res.extra['seconds']:.1f} | {gpx / dt * 60:.2f} | {res.n_objects} | "
              f"{peak:.0f} |", flush=True)  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return rows


def finetune(model, dev, steps: int) -> dict:
    img = canvas(1024)
    lab = api.segment(img, model, device=dev, diameter=DIAMETER)
    rate = [ev.steps_per_s for ev in api.train(img, lab, init=model, steps=steps, device=dev, diameter=DIAMETER,
                                               save=False, seed=0) if getattr(ev, "step", 0) == steps]  # fmt: skip
    print(f"| {steps} steps on a 1024^2 image | {rate[-1]:.2f} |", flush=True)
    return dict(steps=steps, steps_per_s=rate[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--seg-sides", default="4096,8192", help="in-memory plane sides for the 2D rows")
    p.add_argument("--tiles", default="default,1024:8", help="tile:batch variants of the 2D rows ('default': ours)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpx-side", type=int, default=32768, help="side of the big zarr plane (32768: 1.07 Gpx)")
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--clusters", default="local:12,none", help="'none' (this process) or local:N, in order")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--budget-s", type=float, default=420, help="start no new big run after this many seconds")
    p.add_argument("--out", default="")
    args = p.parse_args()
    t0 = time.perf_counter()
    dev = select_device(args.device)
    model = api.load_model("bundled")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none"
    head = f"torch {torch.__version__}, {describe(dev)}, GPU {gpu}, {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}"
    print(f"# GPU figures: {head}\n")
    results: dict = {"env": head}
    print("| plane (in memory) | tile / batch | segment s | Mpx/s | probabilities only s | Mpx/s | objects |")
    print("|---|---|---:|---:|---:|---:|---:|")
    variants = [(None, None) if v == "default" else tuple(int(x) for x in v.split(":")) for v in args.tiles.split(",")]
    results["seg2d"] = seg2d(model, dev, [int(s) for s in args.seg_sides.split(",")], variants, args.repeats)
    print("\n| fine-tuning | steps/s |\n|---|---:|")
    results["finetune"] = finetune(model, dev, args.train_steps)
    with tempfile.TemporaryDirectory() as tmp:
        results["big"] = big(model, dev, args.gpx_side, args.block, args.clusters.split(","), Path(tmp),
                             os.cpu_count() or 2, t0 + args.budget_s)  # fmt: skip
    results["seconds"] = time.perf_counter() - t0
    print(f"\n(all in {results['seconds']:.0f} s)")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
