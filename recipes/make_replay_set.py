"""Build the replay set shipped with the package: real crops of the bundled model's training data.

    python recipes/make_replay_set.py --out napari_unet/resources/replay.npz

Fine-tuning replays crops of what the bundled model was trained on, so that it keeps segmenting
ordinary nuclei while it learns a user's corrections (benchmarks/simulated_annotator.py measures
the effect). This takes one 192 x 192 crop, at the model's scale (median nucleus diameter 24 px),
from every second image of ../shared/data/mnfinder/train (the train split only; mnfinder/val stays
unseen), choosing in each image the window with the most labelled nuclei. Micronuclei (left out of
the nuclei labels) are marked untrusted, as in the training recipe. Stored: uint8 images
(normalised by the image's own 1-99.8 percentiles), uint16 instance labels and a trusted mask,
in one compressed .npz that loads without pickle.

Data: mnfinder 1.2.3 (MIT licence, (c) 2023 Lucian DiPeso).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.transform import resize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_unet.core.instances import median_diameter  # noqa: E402
from napari_unet.core.normalize import normalize_plane, percentile_range  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mnfinder" / "train"
MODEL_DIAMETER = 24.0


def best_window(labels: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window holding the most labelled pixels (stride size/4)."""
    fg = (labels > 0).astype(np.float64)
    csum = np.pad(fg.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    H, W = labels.shape
    best, where = -1.0, (0, 0)
    for y in range(0, max(1, H - size + 1), max(1, size // 4)):
        for x in range(0, max(1, W - size + 1), max(1, size // 4)):
            s = csum[y + size, x + size] - csum[y, x + size] - csum[y + size, x] + csum[y, x]
            if s > best:
                best, where = s, (y, x)
    return where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "napari_unet" / "resources" / "replay.npz")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--every", type=int, default=2, help="take every n-th training image")
    args = p.parse_args()
    images, labels, trusted, names = [], [], [], []
    for f in sorted((DATA / "images").glob("*.tif"))[:: args.every]:
        img = tifffile.imread(f).astype(np.float32)
        lab = tifffile.imread(DATA / "nuclei" / f.name).astype(np.int32)
        mn = tifffile.imread(DATA / "micronuclei" / f.name) > 0
        d = median_diameter(lab)
        lo, hi = percentile_range(img, 1.0, 99.8)
        norm = normalize_plane(img, lo, hi)
        f_scale = MODEL_DIAMETER / d
        shape = (round(img.shape[0] * f_scale), round(img.shape[1] * f_scale))
        norm = resize(norm, shape, order=1, anti_aliasing=f_scale < 1, preserve_range=True)
        lab = resize(lab, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int32)
        mn = resize(ndi.binary_dilation(mn, iterations=2), shape, order=0, anti_aliasing=False) > 0
        y, x = best_window(lab, args.size)
        sl = np.s_[y : y + args.size, x : x + args.size]
        images.append(np.clip(np.rint(np.clip(norm[sl], 0, 1) * 255), 0, 255).astype(np.uint8))
        labels.append(lab[sl].astype(np.uint16))
        trusted.append(~mn[sl])
        names.append(f.stem)
        print(f"{f.stem}: diameter {d:.1f} px, scale {f_scale:.2f}, crop at ({y}, {x}), "
              f"{len(np.unique(lab[sl])) - 1} nuclei")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".part.npz")
    np.savez_compressed(tmp, images=np.stack(images), labels=np.stack(labels), trusted=np.stack(trusted),
                        names=np.array(names), diameter=np.float32(MODEL_DIAMETER))  # fmt: skip
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB, {len(images)} crops)")


if __name__ == "__main__":
    main()
