"""One self-describing model file: architecture, weights, normalisation, training scale, provenance.

The file is a safetensors archive: tensors are the state dict, and its string metadata holds JSON for
everything else. Loading never executes code (no pickle), and every problem is reported as a
`ModelFileError` with one plain sentence.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .errors import ModelFileError
from .model import UNet, UNetConfig
from .scores import MIN_SCORE

__all__ = ["ModelFileError", "ModelInfo", "read_info", "read_model", "save_model"]

FORMAT = "napari-unet/1"
CLASS_NAMES = ("background", "interior", "boundary")
#: Training diameters a model file may declare, px (inputs are rescaled by model diameter / object diameter).
MIN_DIAMETER, MAX_DIAMETER = 2.0, 1000.0


@dataclass
class ModelInfo:
    """Everything a model file says besides its weights.

    Attributes:
        config: The U-Net architecture.
        diameter: Median object diameter (px) of the training data; inputs are rescaled to it.
        normalization: Intensity normalisation applied before the network (percentiles).
        name: Short name of this model or version.
        provenance: Free-form lineage: parent, data hashes, recipe, metrics, dates.
        mask_threshold: Foreground probability above which a pixel joins an object (the outline),
            chosen for each model on its selection sets; files without it use 0.5.
        min_score: `segment`'s default confidence floor for this model's objects (`core.scores.score_floor`);
            files without it use `core.scores.MIN_SCORE`. Fine-tuned versions carry 0 (`core.train`).
        outline_level: `instances.refine_outlines` trims each object's rim below this fraction of its
            contrast; 0 (files without it, and fine-tuned versions, which learn the user's outlines) trims
            nothing.
    """

    config: UNetConfig
    diameter: float = 24.0
    normalization: dict = field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8})
    name: str = "unnamed"
    provenance: dict = field(default_factory=dict)
    mask_threshold: float = 0.5
    min_score: float = MIN_SCORE
    outline_level: float = 0.0

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "diameter": json.dumps(float(self.diameter)),
            "normalization": json.dumps(self.normalization),
            "classes": json.dumps(list(CLASS_NAMES)),
            "name": self.name,
            "provenance": json.dumps(self.provenance),
            "mask_threshold": json.dumps(float(self.mask_threshold)),
            "min_score": json.dumps(float(self.min_score)),
            "outline_level": json.dumps(float(self.outline_level)),
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str] | None, where: str) -> ModelInfo:
        if not meta or meta.get("format") != FORMAT:
            raise ModelFileError(f"{where} is not a napari-unet model file (no '{FORMAT}' header)")
        try:
            info = cls(
                config=UNetConfig.from_dict(json.loads(meta["config"])),
                diameter=float(json.loads(meta["diameter"])),
                normalization=json.loads(meta["normalization"]),
                name=meta.get("name", "unnamed"),
                provenance=json.loads(meta.get("provenance", "{}")),
                mask_threshold=float(json.loads(meta.get("mask_threshold", "0.5"))),
                min_score=float(json.loads(meta.get("min_score", json.dumps(MIN_SCORE)))),
                outline_level=float(json.loads(meta.get("outline_level", "0"))),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{where} has a damaged header: {exc}") from None
        problem = info.problem()
        if problem:
            raise ModelFileError(f"{where} has a damaged header: {problem}")
        return info

    def problem(self) -> str | None:
        """What makes this description unusable, or None: values a model file must never carry."""
        if self.config.classes != len(CLASS_NAMES):
            return f"{self.config.classes} output classes (the format has {len(CLASS_NAMES)})"
        if not (math.isfinite(self.diameter) and MIN_DIAMETER <= self.diameter <= MAX_DIAMETER):
            return f"diameter {self.diameter} is not between {MIN_DIAMETER} and {MAX_DIAMETER} px"
        if not (math.isfinite(self.mask_threshold) and 0.0 < self.mask_threshold < 1.0):
            return f"mask_threshold {self.mask_threshold} is not in (0, 1)"
        if not (math.isfinite(self.min_score) and 0.0 <= self.min_score < 1.0):
            return f"min_score {self.min_score} is not in [0, 1)"
        if not (math.isfinite(self.outline_level) and 0.0 <= self.outline_level < 1.0):
            return f"outline_level {self.outline_level} is not in [0, 1)"
        n = self.normalization
        try:
            lo, hi = float(n.get("low", 1.0)), float(n.get("high", 99.8))
        except (AttributeError, TypeError, ValueError):
            return f"normalization {n!r} is not {{'kind': 'percentile', 'low': ..., 'high': ...}}"
        if n.get("kind", "percentile") != "percentile" or not 0.0 <= lo < hi <= 100.0:
            return f"normalization {n!r} is not percentiles 0 <= low < high <= 100"
        if not isinstance(self.provenance, dict):
            return "provenance is not a JSON object"
        return None


def save_model(model: UNet, info: ModelInfo, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write `model` and `info` to `path` atomically (a temporary file renamed into place).

    Args:
        model: The network.
        info: Its description (config, diameter, normalisation, provenance).
        path: The file to write.
        overwrite: Replace an existing file; when False, FileExistsError if the name is taken.

    Returns:
        The path written.
    """
    path = Path(path)
    if info.config != model.config:
        raise ValueError("ModelInfo.config does not match the model's config")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=info.to_metadata())
    return path


def read_info(path: str | os.PathLike) -> ModelInfo:
    """A model file's `ModelInfo` from its header, without loading the weights.

    Raises:
        ModelFileError: missing, unreadable, foreign or inconsistent file.
    """
    from safetensors import safe_open

    path = Path(path)
    where = f"model file '{path}'"
    if not path.is_file():
        raise ModelFileError(f"{where} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    except Exception as exc:  # noqa: BLE001 - any reader failure is a damaged file
        raise ModelFileError(f"{where} is unreadable or truncated ({type(exc).__name__})") from None
    return ModelInfo.from_metadata(meta, where)


def check_shapes(path: str | os.PathLike, info: ModelInfo, where: str) -> None:
    """Compare the file's tensor names and shapes with what its config builds, before building anything.

    The expected shapes come from a U-Net built on torch's "meta" device (shapes, no memory), the
    file's from its header (no tensor is read), so a file whose header claims a huge network fails
    here in milliseconds instead of after allocating gigabytes.
    """
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet(info.config).state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # noqa: BLE001 - any reader failure is a damaged file
        raise ModelFileError(f"{where} is unreadable or truncated ({type(exc).__name__})") from None
    if found != expected:
        missing = set(expected) - set(found)
        extra = set(found) - set(expected)
        shaped = {k for k in set(found) & set(expected) if found[k] != expected[k]}
        raise ModelFileError(
            f"{where} does not fit its own architecture (base {info.config.base}, depth {info.config.depth}: "
            f"{len(missing)} missing, {len(extra)} unexpected, {len(shaped)} mis-shaped tensors)"
        )


def check_model_file(path: str | os.PathLike) -> ModelInfo:
    """Read a model file's header and check its tensors' names and shapes (no weights are loaded).

    Raises:
        ModelFileError: missing, unreadable, foreign or inconsistent file.
    """
    info = read_info(path)
    check_shapes(path, info, f"model file '{path}'")
    return info


def read_model(path: str | os.PathLike) -> tuple[UNet, ModelInfo]:
    """Load a model file into a U-Net in eval mode (on the CPU) and its `ModelInfo`.

    Raises:
        ModelFileError: missing, unreadable, foreign or inconsistent file.
    """
    info = check_model_file(path)
    where = f"model file '{path}'"
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{where} is unreadable or truncated ({type(exc).__name__})") from None
    model = UNet(info.config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        expected = set(model.state_dict())
        missing, extra = expected - set(tensors), set(tensors) - expected
        raise ModelFileError(
            f"{where} does not fit its own architecture ({len(missing)} missing, {len(extra)} "
            "unexpected or mis-shaped tensors)"
        ) from None
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"{where} holds non-finite weights in '{k}'")
    return model.eval(), info
