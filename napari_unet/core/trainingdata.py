"""Training data from painted corrections: checks, normalisation, targets, held-out split, crops.

Two ways to say what is right, per image:

* **Dense corrections** (the default): ``labels`` are instance labels (0 = background, 1, 2, ... =
  objects) and ``mask`` says which pixels to trust (nonzero = the user painted or reviewed them; None
  = the whole image). Inside the mask the labels are taken as exact: class targets (background /
  interior / boundary) come from the *whole* label image, so an object that is only partly inside
  the mask still gets its boundary in the right place.
* **Scribbles** (``scribbles=True``): ``labels`` is a scribble layer, the easiest thing to paint in a
  napari Labels layer: 0 = not painted (ignored), **1 = background stroke**, **2 or more = a stroke
  inside an object** (any id; several objects may share one). Background strokes teach background;
  object strokes teach "some object here" (interior or boundary, whichever the network prefers),
  because a stroke does not show where the object ends. A ``mask``, if given, further restricts the
  strokes that count.

Everything is brought to the model's training scale (objects `ModelInfo.diameter` px wide) before
targets are built, so the paper's border weight (w0, sigma) scales with the object size.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

from .errors import InputError
from .instances import border_weights, class_targets
from .losses import BACKGROUND, FOREGROUND
from .model import UNet
from .modelfile import ModelInfo
from .normalize import colour_channel, colour_plane, normalize_plane, percentile_range

REPLAY_FILE = Path(__file__).resolve().parents[1] / "resources" / "replay.npz"
SCRIBBLE_BACKGROUND = 1


@dataclass
class PreparedImage:
    """One training image at the model's scale.

    Attributes:
        image: float32 (H, W), normalised.
        target: int64 (H, W) classes: `BACKGROUND`, `INTERIOR`, `BOUNDARY` or `FOREGROUND`.
        weight: float32 (H, W) border term of the loss weight (0 for scribbles).
        train_mask: bool (H, W) trusted pixels the loss learns from.
        val_mask: bool (H, W) trusted pixels held out for validation (never trained on).
        scale: Resize factor from the original image to this one.
        diameter: Object diameter (px) in the original image.
    """

    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    scale: float
    diameter: float

    @property
    def trusted(self) -> np.ndarray:
        return self.train_mask | self.val_mask


def as_planes(x, what: str, allow_none: bool = False) -> list[np.ndarray | None]:
    """A single 2D array or a sequence of them -> list of 2D numpy arrays (None kept if allowed)."""
    if x is None:
        if allow_none:
            return [None]
        raise InputError(f"no {what} given")
    # One array (of any rank) is one image; anything else is a sequence of images.
    items = [x] if hasattr(x, "shape") else list(x)
    out: list[np.ndarray | None] = []
    for i, a in enumerate(items):
        if a is None and allow_none:
            out.append(None)
            continue
        a = np.asarray(a)
        if a.ndim != 2:
            raise InputError(f"{what} {i + 1} has shape {a.shape}: training takes 2D planes (pick a plane of a stack)")
        if a.size == 0:
            raise InputError(f"{what} {i + 1} is empty (shape {a.shape})")
        out.append(a)
    if not out:
        raise InputError(f"no {what} given")
    return out


def integer_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Check instance labels: integer (or whole-valued float / bool), non-negative -> int32."""
    a = np.asarray(labels)
    if a.dtype == bool:
        return a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all() or (a != np.round(a)).any():
            raise InputError(f"{what} are not integer instance labels (dtype {a.dtype})")
    if a.size and a.min() < 0:
        raise InputError(f"{what} hold negative values; use 0 for background and 1, 2, ... for objects")
    if a.size and a.max() > np.iinfo(np.int32).max:
        raise InputError(f"{what} hold ids too large for int32")
    return a.astype(np.int32)


def check_inputs(images, labels, masks=None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Validate and pair up images, labels and masks; every problem is one `InputError` sentence."""
    imgs = as_planes(images, "image")
    labs = as_planes(labels, "labels")
    msks = as_planes(masks, "mask", allow_none=True)
    if len(msks) == 1 and msks[0] is None:
        msks = [None] * len(imgs)
    if not len(imgs) == len(labs) == len(msks):
        raise InputError(f"got {len(imgs)} images, {len(labs)} label images and {len(msks)} masks; they must pair up")
    out = []
    for i, (img, lab, msk) in enumerate(zip(imgs, labs, msks), start=1):
        if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool) or np.iscomplexobj(img):
            raise InputError(f"image {i} has a non-real dtype ({img.dtype})")
        if lab.shape != img.shape:
            raise InputError(f"labels {i} have shape {lab.shape} but image {i} has shape {img.shape}")
        lab = integer_labels(lab, f"labels {i}")
        if msk is not None:
            if msk.shape != img.shape:
                raise InputError(f"mask {i} has shape {msk.shape} but image {i} has shape {img.shape}")
            msk = np.asarray(msk) != 0
            if not msk.any():
                raise InputError(f"mask {i} is empty: no pixel is marked as trusted")
        out.append((img, lab, msk))
    return out


def array_sha256(a: np.ndarray | None) -> str | None:
    """Content hash of an array (dtype and shape included), for lineage."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def data_hashes(images, labels, masks=None) -> list[dict]:
    """Lineage of the training data: sha256 of each image, labels and mask exactly as given."""
    imgs, labs = as_planes(images, "image"), as_planes(labels, "labels")
    msks = as_planes(masks, "mask", allow_none=True)
    msks = msks * len(imgs) if len(msks) == 1 and msks[0] is None else msks
    return [
        {
            "image_sha256": array_sha256(i),
            "labels_sha256": array_sha256(lab),
            "mask_sha256": array_sha256(m),
            "shape": list(i.shape),
        }
        for i, lab, m in zip(imgs, labs, msks)
    ]


def _resize(a: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    out = resize(a, shape, order=order, anti_aliasing=False, preserve_range=True)
    return out.astype(a.dtype if order == 0 else np.float32)


def prepare_image(
    image: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    *,
    diameter: float,
    model_diameter: float,
    normalization: dict,
    scribbles: bool = False,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> PreparedImage:
    """Normalise, rescale to the model's scale and build targets, border weights and trusted mask."""
    mask = None if mask is None else np.asarray(mask) != 0
    lo, hi = percentile_range(image, normalization.get("low", 1.0), normalization.get("high", 99.8))
    img = normalize_plane(image, lo, hi)
    f = model_diameter / diameter
    if abs(f - 1.0) > 0.02:
        shape = (max(8, round(img.shape[0] * f)), max(8, round(img.shape[1] * f)))
        img = resize(img, shape, order=1, anti_aliasing=f < 1, preserve_range=True).astype(np.float32)
        labels = _resize(labels, shape, 0)
        mask = None if mask is None else _resize(mask, shape, 0)
    if scribbles:
        trusted = labels > 0
        target = np.where(labels == SCRIBBLE_BACKGROUND, BACKGROUND, FOREGROUND).astype(np.int64)
        weight = np.zeros(labels.shape, np.float32)
    else:
        trusted = np.ones(labels.shape, bool)
        target = class_targets(labels).astype(np.int64)
        weight = border_weights(labels, w0=w0, sigma=sigma)
    if mask is not None:
        trusted &= mask
    return PreparedImage(img, target, weight, trusted, np.zeros_like(trusted), f, float(diameter))


def hold_out(items: Sequence[PreparedImage], fraction: float, block: int, rng: np.random.Generator) -> bool:
    """Move whole blocks of trusted pixels from training to validation (in place).

    Blocks of `block` x `block` px (about three objects wide) keep validation pixels away from the
    training pixels' immediate neighbourhood. Nothing is held out when fewer than 5 blocks hold
    trusted pixels: then validation runs on the training pixels.

    Returns:
        True when a held-out set was made.
    """
    cells = []
    for k, it in enumerate(items):
        H, W = it.train_mask.shape
        for y in range(0, H, block):
            for x in range(0, W, block):
                n = int(it.train_mask[y : y + block, x : x + block].sum())
                if n:
                    cells.append((k, y, x, n))
    if fraction <= 0 or len(cells) < 5:
        return False
    target = fraction * sum(c[3] for c in cells)
    held = 0
    for j in rng.permutation(len(cells)):
        k, y, x, n = cells[j]
        if held + n > 1.5 * target:  # a block that alone would take too much of the data
            continue
        it = items[k]
        sl = (slice(y, y + block), slice(x, x + block))
        it.val_mask[sl] = it.train_mask[sl]
        it.train_mask[sl] = False
        held += n
        if held >= target:
            break
    if held == 0:
        return False
    return any(it.train_mask.any() for it in items)


def _crop(a: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """`size` x `size` crop with top-left (y, x), mirror-padded where it leaves the array."""
    H, W = a.shape
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, H), min(x + size, W)
    out = a[y0:y1, x0:x1]
    pad = ((y0 - y, y + size - y1), (x0 - x, x + size - x1))
    if any(p for pp in pad for p in pp):
        mode = "reflect" if min(out.shape) > max(max(pp) for pp in pad) else "symmetric"
        out = np.pad(out, pad, mode=mode if min(out.shape) > 1 else "edge")
        if out.shape != (size, size):  # image much smaller than the crop: wrap the padding again
            out = np.pad(out, ((0, size - out.shape[0]), (0, size - out.shape[1])), mode="wrap")[:size, :size]
    return out


class CropSampler:
    """Random training crops, centred on a trusted pixel with probability `bias`, else anywhere.

    Images are chosen in proportion to their trusted pixels, so a large image with a small
    correction does not drown a small, fully corrected one.
    """

    def __init__(self, items: Sequence[PreparedImage], size: int, rng: np.random.Generator, bias: float = 0.9):
        self.items = [it for it in items if it.train_mask.any()]
        if not self.items:
            raise InputError("no trusted pixel is left for training")
        self.size, self.rng, self.bias = size, rng, bias
        self.where = [np.flatnonzero(it.train_mask) for it in self.items]
        counts = np.array([w.size for w in self.where], float)
        self.p = counts / counts.sum()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image (n,1,S,S), target, border weight, train mask) as CPU tensors."""
        s, rng = self.size, self.rng
        parts: list[list[np.ndarray]] = [[], [], [], []]
        for _ in range(n):
            k = int(rng.choice(len(self.items), p=self.p))
            it = self.items[k]
            H, W = it.image.shape
            if rng.random() < self.bias:
                cy, cx = divmod(int(self.where[k][rng.integers(self.where[k].size)]), W)
                y, x = (
                    cy - s // 2 + int(rng.integers(-s // 4, s // 4 + 1)),
                    cx - s // 2 + int(rng.integers(-s // 4, s // 4 + 1)),
                )
            else:
                y, x = (
                    int(rng.integers(min(0, H - s), max(0, H - s) + 1)),
                    int(rng.integers(min(0, W - s), max(0, W - s) + 1)),
                )
            arrays = (it.image, it.target, it.weight, it.train_mask)
            for p, a in zip(parts, arrays):
                p.append(_crop(a, y, x, s))
        t = [torch.from_numpy(np.stack(p)) for p in parts]
        return t[0][:, None], t[1], t[2], t[3]


def validation_crops(
    items: Sequence[PreparedImage], size: int, context: int, max_crops: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Crops around held-out pixels (or, without any, training pixels) with `context` px around them.

    Returns:
        (image (n,1,S,S), target (n,S,S), mask (n,S,S)) with S = size + 2 * context, the mask
        covering only the central `size` x `size` part; None if nothing is trusted.
    """
    use_val = any(it.val_mask.any() for it in items)
    s = size + 2 * context
    cells = []
    for k, it in enumerate(items):
        m = it.val_mask if use_val else it.train_mask
        H, W = m.shape
        for y in range(0, H, size):
            for x in range(0, W, size):
                if m[y : y + size, x : x + size].any():
                    cells.append((k, y, x))
    if not cells:
        return None
    if len(cells) > max_crops:
        cells = [cells[i] for i in sorted(rng.choice(len(cells), max_crops, replace=False))]
    imgs, tgts, msks = [], [], []
    for k, y, x in cells:
        it = items[k]
        m = it.val_mask if use_val else it.train_mask
        centre = np.zeros((s, s), bool)
        centre[context : context + size, context : context + size] = True
        imgs.append(_crop(it.image, y - context, x - context, s))
        tgts.append(_crop(it.target, y - context, x - context, s))
        msks.append(_crop(m, y - context, x - context, s) & centre)
    t = torch.from_numpy
    return t(np.stack(imgs))[:, None], t(np.stack(tgts)), t(np.stack(msks))


def replay_pool(
    n: int, size: int, model_diameter: float, seed: int, real: bool = True, style=None
) -> list[PreparedImage]:
    """Fully labelled images of the bundled model's original domain, at the model's scale.

    Replayed while the model learns the new data (a guard against forgetting): the real crops of the
    bundled model's training data shipped in ``resources/replay.npz`` (see
    ``recipes/make_replay_set.py``) when `real`, plus `n` synthetic images of `size` x `size` in
    `style` (a `synth.SynthStyle`; default: the bundled model's synthetic training style).
    """
    from .instances import median_diameter
    from .synth import SynthStyle, synth_nuclei

    out = []
    if real:
        with np.load(REPLAY_FILE, allow_pickle=False) as z:
            stored = float(z["diameter"])
            for img, lab, ok in zip(z["images"], z["labels"], z["trusted"]):
                out.append(prepare_image(img, lab.astype(np.int32), ok, diameter=stored, model_diameter=model_diameter,
                                         normalization={"low": 0.0, "high": 100.0}))  # fmt: skip
    style = style or SynthStyle(diameter=(16.0, 34.0))
    for i in range(n):
        img, lab = synth_nuclei((size, size), rng=np.random.default_rng([seed, 7919, i]), style=style)
        d = median_diameter(lab) or model_diameter
        out.append(
            prepare_image(
                img, lab, None, diameter=d, model_diameter=model_diameter, normalization={"low": 1.0, "high": 99.8}
            )
        )
    return out


def parse_planes(text: str, n: int) -> list[int]:
    """'0-3, 7' -> [0, 1, 2, 3, 7] (flat plane indices, checked against `n` planes)."""
    out: list[int] = []
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise InputError(f"'{part}' is not a plane number or range (write e.g. 0-3, 7)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= n:
            raise InputError(f"planes {part}: the stack has planes 0 to {n - 1}")
        out.extend(range(a, b + 1))
    return sorted(set(out))


TRUST_MODES = ("painted", "objects", "all")


def training_planes(
    image,
    labels,
    trusted=None,
    *,
    planes: str | list[int] | None = None,
    trust: str = "painted",
    rgb: bool = False,
    channel: int | str | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None, list[int]]:
    """The 2D planes of an image or stack to train on (copies), as the CLI and the Retrain widget choose them.

    Args:
        image: 2D image or stack (planes..., Y, X), numpy or lazy; with `rgb`, a trailing colour axis, of which
            `channel` is taken: an index, ``"mean"`` (of R, G, B), or None: the one `segment` takes by default
            (`normalize.colour_channel`), so that a model is corrected on what it segmented.
        labels: Instance labels of the same spatial shape.
        trusted: The pixels the user vouches for (nonzero), same shape; None trusts every pixel.
        planes: Flat plane indices, or text such as ``"0-3, 7"``; None takes the planes holding trusted
            pixels (or labels, when `trusted` is None).
        trust: ``"painted"`` the trusted pixels; ``"objects"`` also every pixel of an object they touch;
            ``"all"`` every pixel of the chosen planes.

    Returns:
        (images, labels, masks or None when every pixel is trusted, chosen flat plane indices).

    Raises:
        InputError: shapes that differ, a plane that does not exist, or nothing to train on.
    """
    if trust not in TRUST_MODES:
        raise InputError(f"trust must be one of {', '.join(TRUST_MODES)}, got {trust!r}")
    if rgb:
        channel = colour_channel(image, channel)
    shape = tuple(labels.shape)
    ishape = tuple(image.shape[:-1] if rgb else image.shape)
    if ishape != shape or (trusted is not None and tuple(trusted.shape) != shape):
        raise InputError(
            f"the labels are {'x'.join(map(str, shape))} but the image is {'x'.join(map(str, ishape))}"
            + ("" if trusted is None else f" and the mask {'x'.join(map(str, trusted.shape))}")
            + ": they must match"
        )
    if len(shape) < 2:
        raise InputError(f"need 2D planes, got shape {shape}")
    plane_shape = shape[:-2]
    n = int(np.prod(plane_shape)) if plane_shape else 1
    index = [tuple(int(i) for i in np.unravel_index(k, plane_shape)) for k in range(n)] if plane_shape else [()]
    if isinstance(planes, str):
        chosen = parse_planes(planes, n)
    elif planes is not None:
        chosen = sorted({int(k) for k in planes})
        if any(not 0 <= k < n for k in chosen):
            raise InputError(f"planes {chosen}: the stack has planes 0 to {n - 1}")
    else:
        source = trusted if trusted is not None and trust != "all" else labels
        chosen = [k for k in range(n) if np.asarray(source[index[k]]).any()]
    if trusted is None and trust == "painted":
        trust = "all"
    images, labs, masks, kept = [], [], [], []
    for k in chosen:
        idx = index[k]
        lab = np.array(labels[idx], copy=True)
        if trust == "all":
            mask = np.ones(lab.shape, bool)
        else:
            mask = np.asarray(trusted[idx]).astype(bool, copy=True)
            if trust == "objects":
                ids = np.unique(lab[mask])
                mask |= np.isin(lab, ids[ids > 0])
        if not mask.any():
            continue
        img = np.asarray(image[idx])
        if rgb:
            img = colour_plane(img, channel)
        images.append(np.array(img, dtype=np.float32 if img.dtype.kind == "f" else img.dtype, copy=True))
        labs.append(lab)  # dtype as given: `check_inputs` refuses non-integer labels in one sentence
        masks.append(mask)
        kept.append(k)
    if not kept:
        raise InputError(
            "the chosen planes hold no painted or reviewed pixel: paint there first, or choose other planes"
        )
    return images, labs, (None if trust == "all" else masks), kept


#: `side_view_planes`: an XZ or YZ slice is painted when at least this many of its trusted pixels have all
#: their 8 in-slice neighbours trusted too (a painted area, not a line left by strokes in another view).
SIDE_VIEW_MIN_AREA = 9
#: ... and at most this many slices of each orientation are taken, evenly spaced (neighbours repeat).
SIDE_VIEW_MAX = 16


def side_view_planes(
    image, labels, trusted, *, anisotropy: float = 1.0
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[tuple[str, int]]]:
    """XZ and YZ slices of a ZYX stack that the user painted across Z, as 2D training planes.

    Corrections painted in napari's 3D view or with the stack's dims rolled (XZ or YZ displayed) are
    side views of the objects; the 3D mode predicts such views too (`core.segment3d`). Each slice is
    resampled along Z to cubic voxels (`anisotropy` = Z step / XY pixel size; the image linearly, the
    labels and trusted mask by nearest neighbour), so its objects have the XY planes' diameter.

    Returns:
        (images, labels, masks, [("xz", y) or ("yz", x), ...]); empty lists when nothing is painted so.
    """
    if np.ndim(labels) != 3 or tuple(np.shape(image)) != tuple(np.shape(labels)):
        raise InputError("side views need a ZYX stack and labels of its shape")
    if not (np.isfinite(anisotropy) and 1.0 <= anisotropy <= 20.0):
        raise InputError(f"anisotropy (Z step / XY pixel size) must be from 1 to 20, got {anisotropy}")
    t = np.asarray(trusted).astype(bool)
    Z = t.shape[0]
    zi = max(1, int(round(Z * anisotropy)))
    images, labs, masks, names = [], [], [], []
    for view, axis in (("xz", 1), ("yz", 2)):
        # What survives a 3x3 erosion within the slice: painted areas do, the lines that strokes in the
        # other orientations leave across it do not.
        footprint = np.ones((3, 1, 3) if axis == 1 else (3, 3, 1), bool)
        area = ndi.binary_erosion(t, footprint).sum(axis=(0, 3 - axis))  # per slice
        found = np.flatnonzero(area >= SIDE_VIEW_MIN_AREA)
        if found.size > SIDE_VIEW_MAX:
            found = found[np.round(np.linspace(0, found.size - 1, SIDE_VIEW_MAX)).astype(int)]
        for k in found:
            take = (slice(None), int(k)) if axis == 1 else (slice(None), slice(None), int(k))
            img = np.asarray(image[take], dtype=np.float32)
            shape = (zi, img.shape[1])
            images.append(_resize(img, shape, 1))
            labs.append(_resize(np.asarray(labels[take]), shape, 0))
            masks.append(_resize(t[take], shape, 0))
            names.append((view, int(k)))
    return images, labs, masks, names


def diameters_per_image(diameter, n: int) -> list[float | None]:
    """One diameter (or None) per image from a scalar or a sequence; checked."""
    ds = list(diameter) if isinstance(diameter, (list, tuple)) else [diameter] * n
    if len(ds) != n:
        raise InputError(f"got {len(ds)} diameters for {n} images")
    for d in ds:
        if d is not None and not (np.isfinite(d) and d > 0):
            raise InputError(f"diameter must be a positive number of pixels, got {d}")
    return ds


def painted_diameter(labels: np.ndarray, mask: np.ndarray | None, scribbles: bool) -> float | None:
    """Median diameter of the objects the labels hold (not for scribbles: strokes are not objects)."""
    if scribbles or not labels.any():
        return None
    from .instances import median_diameter

    return median_diameter(labels)


def model_diameter(model: UNet, image: np.ndarray, info: ModelInfo, dev: torch.device) -> float:
    """Object diameter in `image` as the model estimates it (for scribbles, which show no sizes)."""
    from .normalize import normalize_plane, percentile_range
    from .predict import InferenceModel
    from .segment import estimate_diameter

    lo, hi = percentile_range(image)
    return estimate_diameter(InferenceModel.prepare(model, dev), normalize_plane(image, lo, hi), info)
