"""The Python API, the one entry point: the CLI and the widgets make these same calls.

Segmenting and training come in two forms: a generator (`segment_iter`, `estimate_iter`, `train`) that
yields progress (and a `Notice` when something must be told, e.g. an out-of-GPU-memory fallback) and
returns the result, and a function that runs it to the end (`segment`, `train_model`).

Which model: every default is ``"current"``, the version that training or `revert` last selected;
it is the bundled model until one is chosen (``napari-unet models list`` stars it).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .core import versions
from .core.atomic import check_output
from .core.blockwise import DEFAULT_BLOCK
from .core.errors import InputError, ModelFileError, NapariUnetError
from .core.jobs import Notice, drain, estimate_job, resolve_model, segment_job, train_job
from .core.model import UNet
from .core.segment import Progress, SegmentResult

if TYPE_CHECKING:
    from .core.bigrun import BigResult
    from .core.train import TrainEvent, TrainResult

__all__ = [
    "InputError",
    "ModelFileError",
    "NapariUnetError",
    "Notice",
    "Progress",
    "bundled_model_path",
    "current_version",
    "estimate_iter",
    "export",
    "list_versions",
    "load_model",
    "models_dir",
    "resolve_model_path",
    "revert",
    "segment",
    "segment_iter",
    "train",
    "train_model",
]


def bundled_model_path() -> Path:
    """Path of the model file shipped inside the package."""
    return versions.bundled_model_path()


def models_dir() -> Path:
    """Per-user folder of saved model versions: $NAPARI_UNET_MODELS, else the platform's data dir."""
    return versions.models_dir()


def resolve_model_path(spec: str | os.PathLike = "current") -> Path:
    """'bundled', 'current', a model file path, or the name of a saved version -> the file to load."""
    return versions.resolve_model_path(spec)


def load_model(spec: str | os.PathLike = "current", *, device: str | torch.device | None = None) -> UNet:
    """Load a U-Net in eval mode.

    Args:
        spec: ``"current"`` (the version `revert` / training last selected, else bundled),
            ``"bundled"``, a model file, a bioimage.io package exported by napari-unet (``.zip``), or
            the name of a saved version.
        device: Where to put it; None leaves it on the CPU (`segment` moves a copy as needed).

    Returns:
        The model; its `info` attribute holds the file's `ModelInfo` (training diameter, provenance).

    Raises:
        ModelFileError: missing, unreadable or foreign file.
        TypeError: `spec` is not a string or path.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be 'current', 'bundled', a model file or a version name, got {type(spec).__name__}")
    model, info = versions.load_model_file(resolve_model_path(spec))
    model.info = info
    if device is not None:
        from .core.device import select_device

        model = model.to(select_device(device))
    return model


def _as_array(x, what: str):
    """Arrays as given (numpy, zarr, dask); a torch tensor as numpy; anything else through np.asarray."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "shape") and hasattr(x, "ndim") and hasattr(x, "dtype"):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of numpy's
        raise TypeError(f"{what} must be an array (numpy, zarr, dask or torch), got {type(x).__name__}") from exc


def _unwrap_dims(image, axes: str | None):
    """An xarray DataArray (anything with a name in `dims` for each axis): its numpy or dask array, with the axes
    its dims name when `axes` is None and every name is known (`normalize.axes_from_names`; else the axes are
    guessed as for any array)."""
    from .core.normalize import axes_from_names

    dims = getattr(image, "dims", None)
    if not (isinstance(dims, tuple) and len(dims) == image.ndim and hasattr(image, "data")):
        return image, axes
    return image.data, axes if axes is not None else axes_from_names(dims)


def segment_iter(
    image,
    model: UNet | str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    link_iou: float | None = None,
    tta: bool = False,
    probabilities: bool = False,
    estimate_plane: int | None = None,
    doubt: bool = False,
    output: str | os.PathLike | None = None,
    cluster=None,
    block: int | None = DEFAULT_BLOCK,
    overwrite: bool = False,
    pixel_size: tuple[float, float] | None = None,
    merge_cuts: bool = True,
    min_score: float | None = None,
    mode: str = "2d",
    anisotropy: float | None = None,
) -> Generator[Progress | Notice, None, SegmentResult | BigResult]:
    """Segment nuclei, as a generator: yields `Progress` (and `Notice`), returns a `SegmentResult`.

    Same arguments as `segment`, plus `probabilities` (also return the uint8 foreground probability),
    `doubt` (also return the per-pixel doubt map, `SegmentResult.doubt`; with `output`, written into it as the
    OME-Zarr image ``OUT.zarr/doubt``, `BigResult.doubt`) and `estimate_plane` (for a stack without a diameter,
    estimate it on this flat plane index rather than on the most contrasted plane). Out of GPU memory it retries with smaller batches and
    tiles, then on the CPU, and yields a `Notice` saying so. Closing it stops at the next tile batch.

    With `output` (a ``.zarr`` folder), the labels are written there block by block instead
    (`core.bigrun`: bounded memory, resumable, optionally on a dask `cluster`) and a `BigResult` is returned.
    """
    image, axes = _unwrap_dims(_as_array(image, "image"), axes)
    net = resolve_model(model)
    _check_segment_options(diameter, tile, overlap, batch_size, link_iou, min_score, channel, axes, anisotropy)
    tile = None if tile is None else int(tile)
    batch_size = None if batch_size is None else int(batch_size)
    if block is not None and not (isinstance(block, (int, np.integer)) and block >= 256):
        raise InputError(f"block must be a whole number of pixels, at least 256, got {block}")
    if mode not in ("2d", "3d"):
        raise InputError(f"mode must be '2d' (plane by plane) or '3d' (3D objects), got '{mode}'")
    if anisotropy is not None and mode != "3d":
        raise InputError("anisotropy is for mode='3d' (3D objects)")
    if mode == "3d" and link_iou is not None:
        raise InputError("link_iou is for planes linked into objects; 3D objects span the stack already")
    if mode == "3d" and block == DEFAULT_BLOCK:
        from .core.segment3d import BLOCK_3D

        block = BLOCK_3D  # 3D's own default: its blocks are BLOCK_3D px wide and slabs deep (core.segment3d)
    if mode == "3d" and output is None and cluster is None:
        from .core.segment3d import segment_3d_iter

        return (
            yield from segment_3d_iter(
                image, net, anisotropy=1.0 if anisotropy is None else anisotropy, fusion="xyz", device=device,
                diameter=diameter, channel=channel, axes=axes, tile=tile, overlap=overlap, batch_size=batch_size,
                tta=tta, min_score=min_score, block=block,
                doubt=doubt, probabilities=probabilities,
            )
        )  # fmt: skip
    if output is not None or cluster is not None:
        if output is None:
            raise InputError("a cluster run writes its labels to an OME-Zarr: pass output='out.zarr'")
        if probabilities:
            raise InputError("probabilities are not available with a .zarr output; ask for the doubt map instead")
        from .core.bigrun import segment_to_zarr_iter

        return (
            yield from segment_to_zarr_iter(
                image, net, output, device=device, diameter=diameter, channel=channel, axes=axes, tile=tile,
                overlap=overlap, batch_size=batch_size, block=block or DEFAULT_BLOCK, cluster=cluster, tta=tta,
                overwrite=overwrite, pixel_size=pixel_size, merge_cuts=merge_cuts, min_score=min_score,
                link_iou=link_iou, doubt=doubt, mode=mode, anisotropy=1.0 if anisotropy is None else anisotropy,
            )
        )  # fmt: skip
    return (
        yield from segment_job(
            image, net, device=device, diameter=diameter, channel=channel, axes=axes, tile=tile, overlap=overlap,
            batch_size=batch_size, probabilities=probabilities, estimate_plane=estimate_plane, link_iou=link_iou,
            tta=tta, doubt=doubt, block=block, merge_cuts=merge_cuts, min_score=min_score,
        )
    )  # fmt: skip


#: Smallest object diameter the network can resolve, px (below it the image would be upscaled past
#: any use: 1 px took 180 s on a 512² image and found nothing).
MIN_DIAMETER = 3.0
#: Tile sizes accepted, px (below, the network's receptive field does not fit; above, memory).
TILE_RANGE = (64, 4096)


def _check_segment_options(
    diameter, tile, overlap, batch_size, link_iou, min_score=None, channel=None, axes=None, anisotropy=None
) -> None:
    def number(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)

    if not (
        channel is None or channel == "mean" or isinstance(channel, (int, np.integer)) and not isinstance(channel, bool)
    ):
        raise InputError(f"channel must be a channel index, 'mean' or None, got {channel!r}")
    if axes is not None and not isinstance(axes, str):
        raise InputError(f"axes must be letters such as 'ZYX', got {axes!r}")
    if anisotropy is not None and not number(anisotropy):
        raise InputError(f"anisotropy must be a number (Z step / pixel size), got {anisotropy!r}")
    if tile is not None and number(tile) and number(overlap) and overlap >= tile:
        raise InputError(f"overlap ({overlap} px) must be smaller than the tile ({tile} px)")

    if diameter is not None and not (number(diameter) and MIN_DIAMETER <= diameter <= 2000):
        raise InputError(f"diameter must be a number of pixels from {MIN_DIAMETER:g} to 2000, got {diameter}")
    if tile is not None and not (number(tile) and float(tile).is_integer() and TILE_RANGE[0] <= tile <= TILE_RANGE[1]):
        raise InputError(f"tile must be a whole number of pixels from {TILE_RANGE[0]} to {TILE_RANGE[1]}, got {tile}")
    if not (number(overlap) and 0 <= overlap <= 512):
        raise InputError(f"overlap must be from 0 to 512 px, got {overlap}")
    if batch_size is not None and not (number(batch_size) and float(batch_size).is_integer() and batch_size >= 1):
        raise InputError(f"batch_size must be a whole number above 0, got {batch_size}")
    if link_iou is not None and not (number(link_iou) and 0 < link_iou < 1):
        raise InputError(f"link_iou must be between 0 and 1, got {link_iou}")
    if min_score is not None and not (number(min_score) and 0 <= min_score < 1):
        raise InputError(f"min_score must be from 0 to below 1, got {min_score}")


def segment(
    image,
    model: UNet | str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    diameter: float | None = None,
    channel: int | str | None = None,
    axes: str | None = None,
    tile: int | None = None,
    overlap: int = 32,
    batch_size: int | None = None,
    link_iou: float | None = None,
    tta: bool = False,
    return_result: bool = False,
    output: str | os.PathLike | None = None,
    cluster=None,
    block: int | None = DEFAULT_BLOCK,
    overwrite: bool = False,
    merge_cuts: bool = True,
    min_score: float | None = None,
    mode: str = "2d",
    anisotropy: float | None = None,
) -> np.ndarray | SegmentResult:
    """Segment nuclei in a 2D image or a stack into integer instance labels.

    Args:
        image: Array-like (numpy, zarr, dask, torch, xarray) of 2 or more dimensions.
        model: A loaded model, a model spec for `load_model`, or None for ``"current"``.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        diameter: Typical object diameter in pixels (at least 3); estimated from the image when None.
        channel: Channel to segment when the image has a channel axis; None picks the one that
            looks most like a nuclear stain, ``"mean"`` averages them.
        axes: Axis letters from TZCYX ending in YX, e.g. ``"ZYX"``, ``"CYX"``; when None, read from an xarray
            DataArray's dims (T, C, Z, Y, X, S or time, channel, ...), else guessed from the shape.
        tile: Largest input tile in pixels, 64-4096 (default 512 in same mode; tiles are sized to
            fit the image).
        overlap: Minimum overlap between tiles, px.
        batch_size: Tiles per forward pass; None picks about 256 k pixels a batch.
        link_iou: For stacks, link objects across consecutive planes whose IoU exceeds this.
        tta: Test-time augmentation: average the network's output over the four flips of every
            tile (four forward passes, about 2x the time end to end; see benchmarks/RESULTS.md for what it buys).
        return_result: Return the full `SegmentResult` instead: labels, device used, diameter, and
            ``scores``, {label id: confidence in [0, 1]} of every object (how much the model believes it
            is a right, whole nucleus: 1 minus the mean softmax entropy over the object; see
            `core.scores` and benchmarks/RESULTS.md for how well it ranks errors).
        output: A ``.zarr`` folder to write the labels to, block by block, as an OME-Zarr labels image
            (``labels/nuclei``); for images larger than memory. Then the labels are returned as a
            read-only zarr array (a `core.bigrun.BigResult` with `return_result`). An unfinished run
            (its unfinished folder, `core.atomic.unfinished_dir`) with the same settings is resumed.
        cluster: With `output`: ``"local:N"`` (a dask LocalCluster of N one-thread workers), a dask
            scheduler address, or a `distributed.Client`.
        block: Planes larger than this (px) are segmented in blocks with halos and stitched; the result
            does not depend on the block size (measured in benchmarks/RESULTS.md). None: one block. With
            mode ``"3d"`` the default is `core.segment3d.BLOCK_3D` (512 px in Y and X), and deep stacks are cut in Z
            too, into slabs of `core.segment3d.BLOCK_3D_Z` planes (more if the stack is narrower than 512 px).
        overwrite: With `output`: replace an existing one.
        merge_cuts: Rejoin touching objects that look like one nucleus cut in two (a shared border at
            least 0.7 of the smaller one's diameter, a convex union; `core.instances.merge_cut_objects`).
            Better on every real set measured; turn it off for strongly overlapping round nuclei.
        min_score: Drop objects whose confidence score (see `return_result`) is below this, 0-1, or below
            half the plane's median score where that is lower (`core.scores.score_floor`): mostly false
            objects in autofluorescence, cytoplasm or debris (benchmarks/RESULTS.md). Objects 1.5x as bright
            as the plane's median one stay (`core.scores.kept_objects`: a dividing cell's condensed chromatin,
            which the network is often unsure of). 0 keeps every object.
            None: the model's own floor (`ModelInfo.min_score`: 0.3 for the bundled model, 0 for fine-tuned
            versions, which are less confident than that floor assumes).
        mode: ``"2d"``: plane by plane (stacks linked with `link_iou`); ``"3d"``: a ZYX stack whose Z is spatial
            into 3D objects (`core.segment3d`: the network on XY, XZ and YZ views, fused, and a 3D watershed;
            1.6-2.5x the plane-by-plane time; measured in benchmarks/RESULTS.md). The stack is read block by
            block; with `output` (and optionally `cluster`) the labels are written block by block too.
        anisotropy: With mode ``"3d"``: Z step / XY pixel size, 1-20 (default 1: isotropic voxels).

    Returns:
        int32 labels with the image's spatial shape (the channel axis removed); 0 is background,
        ids are unique across planes.

    Raises:
        InputError: bad image or option (one sentence naming it). TypeError: `model` or `image` of a wrong kind.
    """
    result = drain(
        segment_iter(
            image,
            model,
            device=device,
            diameter=diameter,
            channel=channel,
            axes=axes,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            link_iou=link_iou,
            tta=tta,
            output=output,
            cluster=cluster,
            block=block,
            overwrite=overwrite,
            merge_cuts=merge_cuts,
            min_score=min_score,
            mode=mode,
            anisotropy=anisotropy,
        )  # fmt: skip
    )
    if return_result:
        return result
    if output is not None:
        import zarr

        return zarr.open_group(str(result.path), mode="r")["labels/nuclei/0"]
    return result.labels


def estimate_iter(
    image,
    model: UNet | str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    channel: int | str | None = None,
    axes: str | None = None,
    plane: int = 0,
) -> Generator[Progress, None, float]:
    """Estimate the object diameter (px) on one plane of `image` (flat plane index `plane`), as a generator."""
    return (yield from estimate_job(_as_array(image, "image"), resolve_model(model), device=device, channel=channel,
                                    axes=axes, plane=plane))  # fmt: skip


# -- retraining -------------------------------------------------------------------------------
def train(
    images,
    labels,
    masks=None,
    *,
    init: str | os.PathLike | UNet = "current",
    seconds: float | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    save: bool = True,
    name: str | None = None,
    make_current: bool | None = None,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    **kw,
) -> Generator[TrainEvent | Notice, None, TrainResult]:
    """Fine-tune a model on corrected images: a generator of `TrainEvent` (and `Notice`), returning a `TrainResult`.

    The engine is `napari_unet.core.train.train_iter` (see there for the training arguments:
    scribbles, preview, diameter, seed, settings). Out of GPU memory it retries with smaller
    batches, then on the CPU. Stop by closing the generator at any yield: nothing is saved and the
    starting model is untouched.

    Args:
        save: Save the result as a new version in `models_dir()` with its lineage.
        name: Version name; default ``v<NNNN>-<YYYYMMDD>-<HHMMSS>``. Never overwrites a version.
        make_current: Point "current" at the new version; None (default) does so only when it
            improved (its held-out metric did not drop).
        output: Also write the model to this file. The version and the file are saved together or
            not at all: a run that fails changes nothing in the store.
        overwrite: Replace an existing `output`.

    Example::

        gen = napari_unet.train(image, corrected_labels, touched_mask, seconds=60)
        for event in gen: ...            # or: result = napari_unet.train_model(...)
    """
    if name is not None:
        name = versions.validate_name(name)
        if save and (versions.models_dir() / f"{name}{versions.SUFFIX}").exists():
            raise InputError(f"a version named '{name}' exists already; choose another name")
    if output is not None:
        output = check_output(output, overwrite)
    if isinstance(init, torch.nn.Module) and not isinstance(init, UNet):
        raise TypeError(f"init must be a napari-unet UNet, a model file or a version name, got {type(init).__name__}")
    images = (
        [_as_array(a, "images") for a in images] if isinstance(images, (list, tuple)) else _as_array(images, "images")
    )
    result = yield from train_job(images, labels, masks, init=init, seconds=seconds, steps=steps, device=device, **kw)
    if save or output is not None:
        result.path = _save(result, save=save, name=name, make_current=make_current, output=output,
                            overwrite=overwrite)  # fmt: skip
        result.name = result.model.info.name
    return result


def _save(result: TrainResult, *, save: bool, name: str | None, make_current: bool | None,
          output: Path | None, overwrite: bool) -> Path | None:  # fmt: skip
    """Save a run as a version (and to `output`), all or nothing; then point "current" at it if due."""
    from .core.atomic import atomic_write
    from .core.modelfile import save_model

    model = result.model
    path, previous = None, versions.current_name()
    improved = result.metrics.get("improved")
    due = bool(make_current or (make_current is None and improved is not False))
    try:
        if output is None:
            path = versions.save_version(model, model.info, name)
            if due:
                versions.set_current(model.info.name)
            return path
        with atomic_write(output, overwrite=overwrite) as tmp:
            if save:
                path = versions.save_version(model, model.info, name)
            else:
                model.info.name = name or model.info.name
            save_model(model, model.info, tmp)
            if save and due:
                versions.set_current(model.info.name)
        return path or output
    except BaseException:
        if path is not None:  # the run failed: no trace of it in the store
            path.unlink(missing_ok=True)
            if versions.current_name() != previous:
                versions.set_current(previous or "bundled")
        raise


def train_model(
    images,
    labels,
    masks=None,
    *,
    init: str | os.PathLike | UNet = "current",
    seconds: float | None = None,
    steps: int | None = None,
    device: str | torch.device = "auto",
    **kw,
) -> TrainResult:
    """Run `train` to the end and return its `TrainResult` (model, saved path, name, metrics)."""
    return drain(train(images, labels, masks, init=init, seconds=seconds, steps=steps, device=device, **kw))


def export(
    model: UNet | str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    format: str | None = None,  # noqa: A002 - the CLI's word
    overwrite: bool = False,
) -> Path:
    """Export a model so it can leave napari: a bioimage.io package (default), ONNX or TorchScript.

    Args:
        model: A loaded model, a spec for `load_model` (``"current"``, ``"bundled"``, a version
            name, a file), or None for ``"current"``.
        out: The file to write (``.zip``, ``.onnx``, ``.pt``); the format follows its suffix unless given.
        format: ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
        overwrite: Replace an existing `out`.

    Returns:
        The file written.

    Raises:
        InputError: unknown format, existing output, missing ``[export]`` extra, a network that
            cannot be exported (nothing is written then).
    """
    from .core.export import export_model

    net = resolve_model(model)
    info = getattr(net, "info", None)
    if info is None:
        from .core.modelfile import ModelInfo

        info = ModelInfo(config=net.config)
    return export_model(net, info, out, format=format, overwrite=overwrite)


def list_versions() -> list[versions.Version]:
    """Saved model versions in `models_dir()`, oldest first (`.current` marks the current one;
    `.problem` says why a version cannot be used)."""
    return versions.list_versions()


def current_version() -> str:
    """Name of the model that ``load_model("current")`` loads (``"bundled"`` if none was chosen); a corrupt
    pointer raises `ModelFileError`, as loading "current" does."""
    return versions.current_name(strict=True) or "bundled"


def revert(name: str) -> Path:
    """Make a saved version (or ``"bundled"``) the current model; versions are never deleted.

    Returns:
        The file that ``load_model("current")`` now loads.

    Raises:
        ModelFileError: no such version, or its file is unreadable (the current model is unchanged).
    """
    versions.set_current(name)
    return versions.resolve_model_path("current")
