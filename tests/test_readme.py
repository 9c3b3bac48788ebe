"""The README's code blocks run: the Python block as written (budgets cut to a few steps), and every
`napari-unet ...` command line parses with the real argument parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import build_parser
from napari_unet.core.synth import synth_nuclei

README = Path(__file__).resolve().parents[1] / "README.md"
SAMPLES = Path(__file__).resolve().parents[1] / "napari_unet" / "resources" / "samples"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_block_runs(one_thread):
    block = _blocks("python")[0]
    fast = re.sub(r"seconds=\d+", "steps=2", block)
    fast = re.sub(r"steps=\d+", "steps=2", fast)
    assert fast != block  # the budgets were found (so the block still names them)
    image = tifffile.imread(SAMPLES / "nuclei2d_u2os.tif")[:160, :160]
    stack = tifffile.imread(SAMPLES / "nuclei3d_cells3d.tif")[
        6:14, :96, :96
    ]  # 8 planes: 3D objects need a quarter of a nucleus in depth
    (img1, lab1), (img2, lab2) = synth_nuclei((96, 96), rng=1), synth_nuclei((96, 96), rng=2)
    corrected = np.zeros(image.shape, np.int32)
    corrected[40:70, 40:70] = 1
    touched = corrected > 0
    namespace = {"image": image, "stack": stack, "corrected": corrected, "touched": touched, "img1": img1,
                 "img2": img2, "lab1": lab1, "lab2": lab2, "mask1": lab1 >= 0, "mask2": None}  # fmt: skip
    exec(compile(fast, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    assert namespace["labels"].shape == image.shape
    assert namespace["napari_unet"].current_version() == "bundled"


def test_readme_onnx_block_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from napari_unet import api

    (block,) = [b for b in _blocks("python") if "onnxruntime" in b]
    monkeypatch.chdir(tmp_path)
    api.export("bundled", "mine.onnx")
    image = tifffile.imread(SAMPLES / "nuclei2d_u2os.tif").astype(np.float32)
    namespace = {"image": image}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    assert namespace["probabilities"].shape == (1, 3, 512, 512)
    np.testing.assert_allclose(namespace["probabilities"].sum(1), 1.0, atol=1e-4)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("napari-unet "):
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_readme_command_lines_parse(line):
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert 'pip install -e ".[all]" && napari-unet demo' in text
    assert 'pip install -e ".[testing]" && python -m pytest -q' in text
