"""Exports of a model file: ONNX, TorchScript and bioimage.io packages, each a small adapter.

Every format holds the same network: the U-Net in eval mode with BatchNorm folded into the
convolutions, fp32, taking a normalised image (N, 1, H, W) and returning the softmax probabilities
(N, 3, H, W) of background, interior and boundary (what `predict` computes before the watershed).
H and W are dynamic; in ``same`` mode they must be multiples of 2**depth (16 for the bundled model).

The extra packages (onnx, onnxscript, onnxruntime, bioimageio.core) come with the ``[export]``
extra; without them the error says which to install. Outputs are written atomically and never over
an existing file unless asked.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, check_output
from .errors import InputError
from .model import UNet, fuse_batchnorm
from .modelfile import ModelInfo

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"bioimageio": ".zip", "onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 18


class Probabilities(nn.Module):
    """The exported network: the U-Net (BatchNorm folded) followed by a softmax over the classes."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def exportable(model: UNet) -> Probabilities:
    """A CPU, fp32, eval-mode copy of `model` with BatchNorm folded and a softmax head (never `model` itself)."""
    net = fuse_batchnorm(copy.deepcopy(model).cpu().float().eval())
    return Probabilities(net).eval().requires_grad_(False)


def example_input(model: UNet, size: int = 256, batch: int = 1) -> torch.Tensor:
    """A deterministic input of an allowed size (for tracing and test tensors)."""
    s = model.fit_input_size(size)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, model.config.in_channels, s, s, generator=g)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (tracer warnings on our shape checks, which are constants for a
    given size; notes about torchvision ops we do not use): the export's outcome is what the user needs."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _first_line(exc: BaseException) -> str:
    """An exporter's message as one plain line (torch's ONNX exporter colours its text with ANSI codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _need(module: str, extra: str = "export"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"this export needs '{module}': pip install 'napari-unet[{extra}]'") from None


def write_onnx(model: UNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the network as ONNX (opset 18) with dynamic batch, height and width."""
    _need("onnx")
    _need("onnxscript")
    path = Path(path)
    net = exportable(model)
    x = example_input(model, batch=2)
    dims = {0: "batch", 2: "height", 3: "width"}
    with atomic_write(path, overwrite=overwrite) as tmp, _quiet():
        try:
            torch.onnx.export(
                net, (x,), str(tmp), dynamo=True, opset_version=ONNX_OPSET, input_names=["image"],
                output_names=["probabilities"], dynamic_shapes={"x": dims}, external_data=False, verbose=False,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - any exporter failure is one line for the user
            raise InputError(f"the model cannot be exported to ONNX: {_first_line(exc)}") from None
    return path


def write_torchscript(model: UNet, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the network as TorchScript (traced; any allowed height and width)."""
    path = Path(path)
    net = exportable(model)
    x = example_input(model)
    with atomic_write(path, overwrite=overwrite) as tmp, _quiet():
        try:
            with torch.no_grad():
                traced = torch.jit.trace(net, (x,), check_trace=False)
            traced.save(str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"the model cannot be exported to TorchScript: {_first_line(exc)}") from None
    return path


def export_model(
    model: UNet,
    info: ModelInfo,
    out: str | os.PathLike,
    *,
    format: str | None = None,  # noqa: A002 - the CLI's word
    overwrite: bool = False,
) -> Path:
    """Export a model in one of `FORMATS` (default: from the suffix of `out`, else bioimage.io).

    Raises:
        InputError: an unknown format, an existing `out` without `overwrite`, a missing extra, or
            a network the exporter cannot handle; nothing is written then.
    """
    out = Path(out)
    if format is None:
        format = next((f for f, s in SUFFIXES.items() if out.name.lower().endswith(s)), "bioimageio")
    if format not in FORMATS:
        raise InputError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}")
    check_output(out, overwrite, f"model{SUFFIXES[format]}")
    if format == "onnx":
        return write_onnx(model, out, overwrite=overwrite)
    if format == "torchscript":
        return write_torchscript(model, out, overwrite=overwrite)
    from .bioimageio_package import write_package

    return write_package(model, info, out, overwrite=overwrite)
