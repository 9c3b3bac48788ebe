"""Issue 13's alternative: a small 3D U-Net trained on synthetic 3D nuclei, against the 3D mode's fused 2D views.

`python benchmarks/unet3d_alternative.py --seconds 900` trains (or resumes: a checkpoint is written every
minute to ``benchmarks/runs/unet3d.pt``, so a stopped run continues where it stopped) a small 3D U-Net
(Ronneberger's blocks in 3D: 3x3x3 conv + BN + ReLU pairs, 2x2x2 max-pooling doubling channels, 2x2x2
up-convolutions, skip concatenation, 1x1x1 output; base 8, three levels) on the three classes of
`core.instances.class_targets` computed from exact 3D labels, then evaluates it with the same
instance step as the 3D mode (`segment3d.labels_from_probabilities_3d`) on `benchmarks/segment_3d.py`'s
stacks (seeds 0, 1 at anisotropy 1, 2, 4), side by side with ``mode="3d"`` (the bundled 2D network on XY,
XZ and YZ views). Training stacks use other seeds (from 1000) and anisotropy 1-4, resampled to cubic
voxels as at inference (Z stretched linearly, labels nearest), with flips, 90-degree turns in XY and
intensity gain / gamma. The 3D network sees the generator it is evaluated on: an advantage the
bundled 2D network does not have.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.core.instances import class_targets  # noqa: E402
from napari_unet.core.jobs import drain  # noqa: E402
from napari_unet.core.losses import masked_loss  # noqa: E402
from napari_unet.core.metrics import match_instances  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402
from napari_unet.core.segment3d import _resample_z, labels_from_probabilities_3d, segment_3d_iter  # noqa: E402
from napari_unet.core.synth3d import synth_nuclei_3d  # noqa: E402

CHECKPOINT = ROOT / "benchmarks" / "runs" / "unet3d.pt"
CROP = (32, 64, 64)


def _pair(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet3D(nn.Module):
    """A small 'same'-padded 3D U-Net: (n, 1, D, H, W) -> (n, 3, D, H, W) logits; D, H, W multiples of 4."""

    def __init__(self, base: int = 8, levels: int = 3):
        super().__init__()
        widths = [base * 2**k for k in range(levels)]
        self.down = nn.ModuleList([_pair(1 if k == 0 else widths[k - 1], w) for k, w in enumerate(widths)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(widths[k + 1], widths[k], 2, stride=2) for k in range(levels - 1)])
        self.merge = nn.ModuleList([_pair(2 * widths[k], widths[k]) for k in range(levels - 1)])
        self.out = nn.Conv3d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        for k in reversed(range(len(self.up))):
            x = self.merge[k](torch.cat([skips[k], self.up[k](x)], dim=1))
        return self.out(x)


def _iso(img: np.ndarray, lab: np.ndarray | None, anisotropy: float):
    """The stack at cubic voxels: image normalised and stretched linearly in Z, labels by nearest plane."""
    lo, hi = percentile_range(img)
    x = normalize_plane(img, lo, hi)
    zi = max(1, int(round(img.shape[0] * anisotropy)))
    x = _resample_z(x, zi).astype(np.float32) if zi != img.shape[0] else x
    if lab is None:
        return x, None
    idx = np.minimum(((np.arange(zi) + 0.5) / anisotropy).astype(int), lab.shape[0] - 1)
    return x, lab[idx]


def _training_pool(n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    pool = []
    for k in range(n):
        a = float(rng.choice([1, 2, 3, 4]))
        img, lab = synth_nuclei_3d((int(64 / a), 128, 128), anisotropy=a, rng=1000 + k)
        x, y = _iso(img, lab, a)
        pool.append((x, class_targets(y).astype(np.int64)))
    return pool


def _batch(pool, rng: np.random.Generator, n: int = 2):
    xs, ys = [], []
    for _ in range(n):
        x, y = pool[int(rng.integers(len(pool)))]
        z0, y0, x0 = (int(rng.integers(0, max(1, s - c + 1))) for s, c in zip(x.shape, CROP))
        window = (slice(z0, z0 + CROP[0]), slice(y0, y0 + CROP[1]), slice(x0, x0 + CROP[2]))
        cx, cy = x[window], y[window]
        pad = [(0, c - s) for s, c in zip(cx.shape, CROP)]
        cx, cy = np.pad(cx, pad, mode="reflect"), np.pad(cy, pad, mode="reflect")
        k = int(rng.integers(4))
        cx, cy = np.rot90(cx, k, (1, 2)), np.rot90(cy, k, (1, 2))
        for ax in (0, 1):
            if rng.random() < 0.5:
                cx, cy = np.flip(cx, ax), np.flip(cy, ax)
        cx = np.clip(cx, 0, None) ** float(rng.uniform(0.7, 1.4)) * float(rng.uniform(0.6, 1.5))
        xs.append(np.ascontiguousarray(cx))
        ys.append(np.ascontiguousarray(cy))
    return torch.from_numpy(np.stack(xs)[:, None]).float(), torch.from_numpy(np.stack(ys))


def train(seconds: float, checkpoint: Path) -> UNet3D:
    torch.manual_seed(0)
    net = UNet3D()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    done_s, step = 0.0, 0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        done_s, step = state["seconds"], state["step"]
        print(f"resuming {checkpoint}: {step} steps, {done_s:.0f} s done", flush=True)
    rng = np.random.default_rng(step)
    pool = _training_pool(24, np.random.default_rng(0))
    net.train()
    t0, last_save, losses = time.perf_counter(), time.perf_counter(), []
    while done_s + time.perf_counter() - t0 < seconds:
        x, y = _batch(pool, rng)
        loss = masked_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if time.perf_counter() - last_save > 60 or done_s + time.perf_counter() - t0 >= seconds:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_name(checkpoint.name + ".tmp")
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                     "seconds": done_s + time.perf_counter() - t0}  # fmt: skip
            torch.save(state, tmp)
            tmp.replace(checkpoint)
            last_save = time.perf_counter()
            print(f"step {step}, {state['seconds']:.0f} s, loss {np.mean(losses[-50:]):.3f}", flush=True)
    return net


@torch.no_grad()
def segment_3d_net(net: UNet3D, img: np.ndarray, anisotropy: float, diameter: float, zoom: float = 1.0) -> np.ndarray:
    """3D labels from the 3D network on the stack at cubic voxels (and zoomed by `zoom`), resampled back."""
    from scipy import ndimage as ndi

    net.eval()
    x, _ = _iso(img, None, anisotropy)
    iso_shape = x.shape
    if zoom != 1.0:
        x = ndi.zoom(x, zoom, order=1)
    pad = [(0, (-s) % 4) for s in x.shape]
    logits = net(torch.from_numpy(np.pad(x, pad, mode="reflect"))[None, None])[0]
    probs = torch.softmax(logits, 0)[:, : x.shape[0], : x.shape[1], : x.shape[2]].numpy()
    if zoom != 1.0:
        probs = np.stack([ndi.zoom(c, [t / s for t, s in zip(iso_shape, c.shape)], order=1) for c in probs])
    probs = _resample_z(probs, img.shape[0]) if x.shape[0] != img.shape[0] else probs
    probs = np.clip(probs * 255 + 0.5, 0, 255).astype(np.uint8)
    min_size = max(8, int(0.1 * np.pi / 6 * diameter**3 / anisotropy))  # as `segment_3d_iter`
    return labels_from_probabilities_3d(probs, min_size=min_size)


def evaluate(net: UNet3D, seeds: int, diameter: float) -> None:
    from napari_unet.api import load_model

    bundled = load_model("bundled")
    print("\n| anisotropy | method | 3D AP@0.5 (mean of seeds) | s |\n|---:|---|---:|---:|")
    for a in (1, 2, 4):
        stacks = [synth_nuclei_3d((int(48 / a), 128, 128), anisotropy=a, rng=s) for s in range(seeds)]
        for name in ("3D mode: 2D network, XY + XZ + YZ", "small 3D U-Net (synthetic-trained)"):
            aps, t = [], time.perf_counter()
            for img, lab in stacks:
                if name.startswith("3D mode"):
                    out = drain(segment_3d_iter(img, bundled, anisotropy=a, fusion="xyz", diameter=diameter)).labels
                else:
                    out = segment_3d_net(net, img, a, diameter)
                aps.append(match_instances(lab, out).ap)
            print(f"| {a} | {name} | {np.mean(aps):.3f} | {time.perf_counter() - t:.1f} |", flush=True)


def evaluate_cells3d(net: UNet3D, diameter: float) -> None:
    """The real confocal stack (bronze labels): the 3D mode estimates the nuclei's diameter; the 3D network
    gets the stack zoomed so that they are `diameter` px, as the 2D network's rescaling does."""
    import tifffile

    from napari_unet.api import load_model

    cells = ROOT.parent / "shared" / "data" / "cells3d"
    img, lab = tifffile.imread(cells / "nuclei.tif"), tifffile.imread(cells / "nuclei_label.tif")
    a = 0.29 / 0.26
    t = time.perf_counter()
    r = drain(segment_3d_iter(img, load_model("bundled"), anisotropy=a, fusion="xyz"))
    print(f"| 1.1 | cells3d: 3D mode (diameter estimated: {r.diameter:.1f} px) | "
          f"{match_instances(lab, r.labels).ap:.3f} | {time.perf_counter() - t:.1f} |")  # fmt: skip
    t = time.perf_counter()
    out = segment_3d_net(net, img, a, r.diameter, zoom=diameter / r.diameter)
    print(f"| 1.1 | cells3d: small 3D U-Net (zoomed {diameter / r.diameter:.2f}x) | "
          f"{match_instances(lab, out).ap:.3f} | {time.perf_counter() - t:.1f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=900, help="training time in all (a resumed run counts its past)")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--diameter", type=float, default=22.0)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = train(args.seconds, args.checkpoint)
    n = sum(v.numel() for v in net.parameters())
    print(f"\n3D U-Net: {n:,} parameters, trained {args.seconds:.0f} s (CPU: {torch.get_num_threads()} threads)")
    evaluate(net, args.seeds, args.diameter)
    evaluate_cells3d(net, args.diameter)


if __name__ == "__main__":
    main()
