"""One self-describing model file: architecture, weights, normalisation, training scale, provenance.

The file is a safetensors archive: tensors are the state dict, and its string metadata holds JSON for
everything else. Loading never executes code (no pickle), and every problem is reported as a
`ModelFileError` with one plain sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import UNet, UNetConfig

FORMAT = "napari-unet/1"
CLASS_NAMES = ("background", "interior", "boundary")


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, foreign or inconsistent."""


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
    """

    config: UNetConfig
    diameter: float = 24.0
    normalization: dict = field(default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8})
    name: str = "unnamed"
    provenance: dict = field(default_factory=dict)
    mask_threshold: float = 0.5

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
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{where} has a damaged header: {exc}") from None
        if not 0.0 < info.mask_threshold < 1.0:
            raise ModelFileError(f"{where} has a damaged header: mask_threshold {info.mask_threshold} is not in (0, 1)")
        return info


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model: UNet, info: ModelInfo, path: str | os.PathLike) -> Path:
    """Write `model` and `info` to `path` atomically (a temporary file renamed into place).

    Returns:
        The path written.
    """
    path = Path(path)
    if info.config != model.config:
        raise ValueError("ModelInfo.config does not match the model's config")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file should look like any other
    try:
        save_file(tensors, tmp, metadata=info.to_metadata())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def read_model(path: str | os.PathLike) -> tuple[UNet, ModelInfo]:
    """Load a model file into a U-Net in eval mode (on the CPU) and its `ModelInfo`.

    Raises:
        ModelFileError: missing, unreadable, foreign or inconsistent file.
    """
    info = read_info(path)
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
