"""Segmentation speed and memory, side by side in one run.

    pip install -e ".[benchmarks]"   # MONAI, for the side-by-side comparison
    python benchmarks/segment_speed.py [--model bundled] [--device cpu] [--repeats 2] [--tile 512] [--memory-size 4096]

For a 2048x2048 image and a 32x512x512 stack (real nuclei tiled from mnfinder/val, so the work
resembles real use) it times:
  * ours, end to end: normalisation, tiled prediction, watershed (what `napari_unet.segment` does);
  * ours, probabilities only: normalisation and tiled prediction (`predict_plane`), no instance step;
  * naive: one full-frame fp32 forward pass of the unprepared network per plane (forward only, no
    post-processing): what a user writing `model(image)` would get;
  * of our end to end, the seconds inside the network's forward passes, and the network's GFLOP/s there
    (over the tiles' pixels, margins and overlaps included): what the tiling and instance steps leave to it;
  * MONAI `sliding_window_inference`, made a fair comparison: the same prepared network (BatchNorm
    folded, channels-last), the same precision (autocast as ours), tile, overlap and batch as ours
    (`--tile`, default our 512 px), Gaussian blending, softmax; forward only.
It also reports the network's GFLOP per megapixel, the achieved GFLOP/s against this machine's
measured matmul rate for the precision in use, and the peak RSS of segmenting an image of
`--memory-size`^2 end to end, of our probabilities and of MONAI's, each measured in a child process
relative to its RSS with the input loaded (MONAI holds its whole float32 output and weight maps; ours
streams tiles into uint8 probabilities).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.api import load_model, segment  # noqa: E402
from napari_unet.core.device import describe, select_device  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.model import flops_per_pixel  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, default_tile, predict_plane  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def real_canvas(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A large image tiled from real nuclei images (mirror-tiled so there are no hard seams)."""
    import tifffile

    src = tifffile.imread(DATA / "mnfinder" / "val" / "images" / "2022-10-14_U2OS_1.tif").astype(np.uint16)
    reps = (int(np.ceil(shape[0] / src.shape[0])) + 1, int(np.ceil(shape[1] / src.shape[1])) + 1)
    tiles = np.block(
        [
            [src[:: 1 if (i % 2 == 0) else -1, :: 1 if (j % 2 == 0) else -1] for j in range(reps[1])]
            for i in range(reps[0])
        ]
    )
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, src.shape[0]), rng.integers(0, src.shape[1])
    return np.ascontiguousarray(tiles[y : y + shape[0], x : x + shape[1]])


def matmul_rate(dtype: torch.dtype, n: int = 2048, device="cpu") -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive_forward(model, planes: np.ndarray, device) -> None:
    net = model.to(device).eval()
    with torch.inference_mode():
        for p in planes:
            lo, hi = percentile_range(p)
            x = torch.from_numpy(normalize_plane(p, lo, hi))[None, None].to(device)
            torch.softmax(net(x), 1).cpu()


def ours_probabilities(infer: InferenceModel, planes: np.ndarray, tile: int, overlap: int) -> None:
    for p in planes:
        lo, hi = percentile_range(p)
        drain(predict_plane(infer, normalize_plane(p, lo, hi), tile=tile, overlap=overlap))


def network_seconds(fn) -> tuple[float, int]:
    """Run `fn` once with every call of the prepared network timed: (seconds inside it, input pixels it saw)."""
    spent, pixels = [0.0], [0]
    call = InferenceModel.__call__

    def timed_call(self, batch):
        t = time.perf_counter()
        try:
            return call(self, batch)
        finally:
            spent[0] += time.perf_counter() - t
            pixels[0] += int(np.prod(batch.shape[-2:])) * batch.shape[0] * (4 if self.tta else 1)

    InferenceModel.__call__ = timed_call
    try:
        fn()
    finally:
        InferenceModel.__call__ = call
    return spent[0], pixels[0]


def monai_forward(infer: InferenceModel, planes: np.ndarray, tile: int, overlap: int, batch: int) -> None:
    """MONAI's sliding window with our prepared network (fused where ours is), precision, tile, overlap and batch."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        for p in planes:
            lo, hi = percentile_range(p)
            x = torch.from_numpy(normalize_plane(p, lo, hi))[None, None].to(infer.device)
            if infer.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(infer.device.type, dtype=infer.dtype, enabled=infer.dtype is not None):
                out = sliding_window_inference(x, (tile, tile), batch, infer.forward_net, overlap=overlap / tile,
                                               mode="gaussian")  # fmt: skip
            torch.softmax(out.float(), 1).cpu()


def peak_memory_child(model_spec: str, size: int, method: str, tile: int, overlap: int, batch: int) -> dict:
    """Peak RSS of `method` (``ours``: segment end to end; ``probabilities``; ``monai``) on a size x size
    uint16 image, in a fresh process.

    `ru_maxrss` is not used: Linux carries it across exec, so a child would report this (large)
    benchmark process's peak. The child resets its own high-water mark (VmHWM, via clear_refs)
    after loading the input and warming up, and reads it back afterwards.
    """
    path = Path(tempfile.mkdtemp()) / "canvas.npy"
    np.save(path, real_canvas((size, size), seed=7))  # real nuclei, so the watershed has real work
    code = f"""
import json, sys, time, numpy as np, torch
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
torch.set_num_threads({torch.get_num_threads()})
from napari_unet.api import load_model, segment
from napari_unet.core.predict import InferenceModel
from segment_speed import monai_forward, ours_probabilities
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1])
m = load_model({model_spec!r})
img = np.load({str(path)!r})
infer = InferenceModel.prepare(m, torch.device('cpu'))
run = {{
    "ours": lambda im: int(segment(im, m, device='cpu', diameter=24.0, tile={tile}, overlap={overlap}).max()),
    "probabilities": lambda im: ours_probabilities(infer, im[None], {tile}, {overlap}),
    "monai": lambda im: monai_forward(infer, im[None], {tile}, {overlap}, {batch}),
}}[{method!r}]
run(img[:256, :256])  # warm-up: libraries loaded
open('/proc/self/clear_refs', 'w').write('5')  # reset VmHWM to the current RSS
before = status('VmRSS:')
t = time.perf_counter()
objects = run(img)
dt = time.perf_counter() - t
print(json.dumps({{"objects": objects, "peak_kb": status('VmHWM:'), "before_kb": before, "seconds": dt, "input_mb": img.nbytes / 2**20}}))
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    finally:
        path.unlink()
        path.parent.rmdir()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bundled")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tile", type=int, default=None, help="tile for ours and MONAI (default: ours, 512 px)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--memory-size", type=int, default=4096)
    args = p.parse_args()
    dev = select_device(args.device)
    model = load_model(args.model)
    infer = InferenceModel.prepare(model, dev)
    tile = args.tile or default_tile(model)
    batch = max(1, round(4 * 256 * 256 / tile**2))  # what predict_window picks for this tile
    gflop_per_mpx = flops_per_pixel(model) * 1e6 / 1e9
    fp32 = matmul_rate(torch.float32, device=dev.type)
    bf16 = matmul_rate(torch.bfloat16, device=dev.type)
    roof, prec = (bf16, "bf16") if infer.dtype == torch.bfloat16 else (fp32, "fp32")
    print(
        f"# segment speed: {platform.processor() or platform.machine()}, {describe(dev)}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"network: {model.config}, {gflop_per_mpx:.1f} GFLOP/Mpx; matmul fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s; "
        f"tile {tile}, overlap {args.overlap}, batch {batch}, {prec} for ours and MONAI\n"
    )
    cases = {
        "2048x2048": real_canvas((2048, 2048))[None],
        "32x512x512": np.stack([real_canvas((512, 512), seed=i) for i in range(32)]),
    }
    rows = []
    for name, planes in cases.items():
        mpx = planes.size / 1e6
        image = planes[0] if planes.shape[0] == 1 else planes
        t_ours = timed(partial(segment, image, model, device=dev, diameter=24.0, tile=args.tile, overlap=args.overlap),
                       args.repeats)  # fmt: skip
        t_prob = timed(partial(ours_probabilities, infer, planes, tile, args.overlap), args.repeats)
        t_naive = timed(partial(naive_forward, model, planes, dev), args.repeats)
        t_monai = timed(partial(monai_forward, infer, planes, tile, args.overlap, batch), args.repeats)
        t_net, px = network_seconds(partial(segment, image, model, device=dev, diameter=24.0, tile=args.tile,
                                            overlap=args.overlap))  # fmt: skip
        rows.append((name, mpx, t_ours, t_prob, t_naive, t_monai, t_net, px))
    print(
        f"| input | Mpx | ours end to end s | Mpx/s | GFLOP/s (share of {prec} matmul) | ours, probabilities only s | "
        f"naive full-frame fp32 forward s | MONAI, same network/precision/tile s | ours end to end vs naive | "
        f"ours probabilities vs MONAI | of end to end: in the network s | the network's GFLOP/s (share) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, mpx, t_o, t_p, t_n, t_m, t_net, px in rows:
        gfs = gflop_per_mpx * mpx / t_o
        net_gfs = gflop_per_mpx * px / 1e6 / t_net  # the tiles' pixels, margins and overlaps included
        print(
            f"| {name} | {mpx:.1f} | {t_o:.2f} | {mpx / t_o:.2f} | {gfs:.0f} ({gfs / roof:.0%}) | {t_p:.2f} | {t_n:.2f} | "
            f"{t_m:.2f} | {t_n / t_o:.2f}x | {t_m / t_p:.2f}x | {t_net:.2f} | {net_gfs:.0f} ({net_gfs / roof:.0%}) |"
        )
    if args.memory_size:
        n = args.memory_size
        print(f"\n| {n}x{n} uint16 | seconds | peak RSS beyond the input (MB) |")
        print("|---|---:|---:|")
        for method, label in [("ours", "ours, end to end"), ("probabilities", "ours, probabilities only"),
                              ("monai", "MONAI, same network/precision/tile")]:  # fmt: skip
            mem = peak_memory_child(args.model, n, method, tile, args.overlap, batch)
            beyond = (mem["peak_kb"] - mem["before_kb"]) / 1024
            extra = f" ({mem['objects']} objects)" if mem["objects"] else ""
            print(f"| {label}{extra} | {mem['seconds']:.1f} | {beyond:.0f} |", flush=True)


if __name__ == "__main__":
    main()
