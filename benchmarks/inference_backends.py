"""Could another inference backend close the gap to the matmul roof? (`python benchmarks/inference_backends.py`)

Side by side in one run, on this machine's CPU threads:
* **ours**: the engine's default (`InferenceModel`: folded BN, channels-last, bf16 autocast where native);
* **torch.compile** (inductor) of the same network;
* **ONNX Runtime** (CPU execution provider) on the ONNX export (`core.export.write_onnx`);
* **int8**: post-training static quantisation (torch.ao FX, x86 backend), calibrated on mnfinder train crops.

Each is timed on batches of 512^2 tiles (the engine's tile and batch), and used end to end through the engine
(`predict_window` takes any callable with the network's shape rules) on mnfinder val at the labels' diameter
for AP@0.5 and the agreement (AP@0.5) of its labels with ours. The matmul roof is torch's 4096^2 matmul.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_accuracy import load_dataset  # noqa: E402

from napari_unet.api import load_model  # noqa: E402
from napari_unet.core.device import autocast_dtype  # noqa: E402
from napari_unet.core.instances import labels_from_probabilities, median_diameter, min_object_size  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.metrics import aggregate, match_instances  # noqa: E402
from napari_unet.core.model import flops_per_pixel  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.predict import InferenceModel, predict_plane  # noqa: E402


@dataclass
class Backend:
    """Anything the engine can call: `net` for the tile geometry, and batch -> probabilities."""

    net: torch.nn.Module
    run: object

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


def matmul_roof(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """The best of `reps` timed n x n matmuls, GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def torch_backend(infer: InferenceModel) -> Backend:
    return Backend(infer.net, infer)


def compiled_backend(infer: InferenceModel) -> Backend:
    net = torch.compile(copy.deepcopy(infer.net), dynamic=False)
    return Backend(infer.net, InferenceModel(net, infer.device, infer.dtype))


def onnx_backend(model, threads: int) -> Backend:
    import onnxruntime as ort

    from napari_unet.core.export import write_onnx

    path = Path(tempfile.mkdtemp()) / "m.onnx"
    write_onnx(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return Backend(model, lambda batch: sess.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0])


def ort_int8_backend(model, calibration: list[np.ndarray], threads: int) -> Backend:
    """ONNX Runtime on the ONNX export quantised to int8 (static, QDQ, per-channel weights), calibrated."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from napari_unet.core.export import write_onnx

    folder = Path(tempfile.mkdtemp())
    write_onnx(model, folder / "m.onnx")

    name = ort.InferenceSession(str(folder / "m.onnx"), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {name: x}

    quantize_static(
        str(folder / "m.onnx"), str(folder / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(folder / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    return Backend(model, lambda batch: sess.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0])


def int8_backend(model, calibration: list[np.ndarray]) -> Backend:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from napari_unet.core.export import exportable

    net = exportable(model)
    example = torch.from_numpy(calibration[0])
    prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (example,))
    with torch.inference_mode():
        for c in calibration:
            prepared(torch.from_numpy(c))
    q = convert_fx(prepared)

    def run(batch):
        with torch.inference_mode():
            return q(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

    return Backend(model, run)


def time_forward(backend: Backend, batch: np.ndarray, reps: int) -> float:
    backend(batch)  # warm-up (and compilation)
    t = time.perf_counter()
    for _ in range(reps):
        backend(batch)
    return batch.shape[0] * batch.shape[2] * batch.shape[3] * reps / (time.perf_counter() - t) / 1e6


def segment(backend, sample, model) -> np.ndarray:
    lo, hi = percentile_range(sample.image)
    d = median_diameter(sample.labels)
    probs = drain(predict_plane(backend, normalize_plane(sample.image, lo, hi), scale=model.info.diameter / d))
    return labels_from_probabilities(probs, min_size=min_object_size(d), mask_threshold=model.info.mask_threshold)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="ours,compile,onnxruntime,int8,onnxruntime-int8")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("bundled")
    dev = torch.device("cpu")
    infer = InferenceModel.prepare(model, dev)
    val = load_dataset("mnfinder_val")
    rng = np.random.default_rng(0)
    batch = rng.random((4, 1, 512, 512)).astype(np.float32)
    calib = []
    for s in load_dataset("mnfinder_train")[:8]:
        lo, hi = percentile_range(s.image)
        x = normalize_plane(s.image, lo, hi)
        calib.append(x[None, None, :256, :256].copy())
    gflop = flops_per_pixel(model) / 1e3  # GFLOP per Mpx
    fp32 = matmul_roof(torch.float32)
    bf16 = matmul_roof(torch.bfloat16) if autocast_dtype(dev) == torch.bfloat16 else None
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    print(f"CPU: {cpu}, {args.threads} threads; ours runs {infer.dtype or 'fp32'}; network {gflop:.1f} GFLOP/Mpx")
    print(
        f"matmul roof: fp32 {fp32:.0f} GFLOP/s" + (f", bf16 {bf16:.0f} GFLOP/s" if bf16 else " (no native bf16)") + "\n"
    )
    print(
        "| backend | forward Mpx/s (4 x 512^2) | GFLOP/s | share of the fp32 roof | x ours | mnfinder val AP@0.5 | agreement with ours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    builders = {
        "ours": lambda: torch_backend(infer),
        "compile": lambda: compiled_backend(infer),
        "onnxruntime": lambda: onnx_backend(model, args.threads),
        "int8": lambda: int8_backend(model, calib),
        "onnxruntime-int8": lambda: ort_int8_backend(model, calib, args.threads),
    }
    ours_rate, ours_labels = None, None
    for name in args.only.split(","):
        try:
            t = time.perf_counter()
            backend = builders[name]()
            build = time.perf_counter() - t
            rate = time_forward(backend, batch, args.reps)
        except Exception as exc:  # noqa: BLE001 - a backend that does not run here is a result too
            print(f"| {name} | failed: {str(exc).splitlines()[0][:80]} | | | | | |", flush=True)
            continue
        labels = [segment(backend, s, model) for s in val]
        ap = aggregate([match_instances(s.labels, lab) for s, lab in zip(val, labels)]).ap
        if name == "ours":
            ours_rate, ours_labels = rate, labels
        agree = (
            aggregate([match_instances(a, b) for a, b in zip(ours_labels, labels)]).ap if ours_labels else float("nan")
        )
        ratio = rate / ours_rate if ours_rate else float("nan")
        print(
            f"| {name} (built in {build:.0f} s) | {rate:.2f} | {rate * gflop:.0f} | {rate * gflop / fp32:.0%} | "
            f"{ratio:.2f}x | {ap:.3f} | {agree:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
