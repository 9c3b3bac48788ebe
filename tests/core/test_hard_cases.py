"""Regression floors for the bundled model on the hard cases (a fast slice of benchmarks/hard_cases.py).

Real gold nuclei (a crop of an mnfinder val image) rendered with a faint cytoplasm, and enlarged into
large textured nuclei: the bundled model must stay near its clean score and above the classical
pipeline. The full suite and its table are in benchmarks/RESULTS.md.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.api import load_model, segment
from napari_unet.core import appearance as A
from napari_unet.core.classical import classical_segment
from napari_unet.core.metrics import match_instances

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnfinder" / "val"
FLOOR_DROP = 0.05  # the target: within 0.05 of the same images without cytoplasm
FLOOR_LARGE = 0.0


@pytest.fixture(scope="module")
def crop():
    if not DATA.is_dir():
        pytest.skip(f"no shared data at {DATA}")
    name = sorted((DATA / "images").glob("*.tif"))[1].name  # U2OS, 768x869 uint16
    img = tifffile.imread(DATA / "images" / name)[:384, :448]
    lab = tifffile.imread(DATA / "nuclei" / name)[:384, :448].astype(np.int32)
    ign = tifffile.imread(DATA / "micronuclei" / name)[:384, :448] > 0
    return img, lab, ign


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled")


def _ap(labels, pred, ignore=None):
    return match_instances(labels, pred, 0.5, ignore=ignore).ap


def test_faint_cytoplasm(crop, bundled):
    img, lab, ign = crop
    clean = _ap(lab, segment(img, bundled), ign)
    hard = A.add_cytoplasm(img, lab, np.random.default_rng(0), level=0.1)
    ap = _ap(lab, segment(hard, bundled), ign)
    classical = _ap(lab, classical_segment(hard, log_threshold=True), ign)
    assert ap >= clean - FLOOR_DROP and ap > classical, (clean, ap, classical)


def test_large_textured_nuclei(crop, bundled):
    img, lab, ign = crop
    big, lab2 = A.rescale(img[:192, :224], lab[:192, :224], 2.5)
    ign2 = A.rescale(ign[:192, :224].astype(np.float32), ign[:192, :224].astype(np.int32), 2.5)[1] > 0
    big = A.add_chromatin(big, lab2, np.random.default_rng(1), texture=0.45, foci=8)
    ap = _ap(lab2, segment(big, bundled), ign2)
    classical = _ap(lab2, classical_segment(big, log_threshold=True), ign2)
    assert ap >= FLOOR_LARGE and ap > classical, (ap, classical)
