"""Regression floors for the bundled model on the hard cases (a fast slice of benchmarks/hard_cases.py).

Real gold nuclei (an mnfinder val image) rendered with a faint cytoplasm, and enlarged into
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
# Regression floors, with margin: v2 measured 0.899 -> 0.797 with the cytoplasm (log-classical 0.769) and
# 0.684 on the large textured nuclei (classical 0.444); v1 measured 0.913 -> 0.397 and 0.575, failing both.
# The target (within 0.05 of clean, over the three val images) is reported by the benchmark.
FLOOR_DROP = 0.15
FLOOR_LARGE = 0.6


@pytest.fixture(scope="module")
def image():
    if not DATA.is_dir():
        pytest.skip(f"no shared data at {DATA}")
    name = sorted((DATA / "images").glob("*.tif"))[1].name  # U2OS, 768x869 uint16
    img = tifffile.imread(DATA / "images" / name)
    lab = tifffile.imread(DATA / "nuclei" / name).astype(np.int32)
    ign = tifffile.imread(DATA / "micronuclei" / name) > 0
    return img, lab, ign


@pytest.fixture(scope="module")
def bundled():
    return load_model("bundled")


def _ap(labels, pred, ignore=None):
    return match_instances(labels, pred, 0.5, ignore=ignore).ap


def test_faint_cytoplasm(image, bundled):
    img, lab, ign = image
    clean = _ap(lab, segment(img, bundled), ign)
    hard = A.add_cytoplasm(img, lab, np.random.default_rng(0), level=0.1)
    ap = _ap(lab, segment(hard, bundled), ign)
    classical = _ap(lab, classical_segment(hard, log_threshold=True), ign)
    assert ap >= clean - FLOOR_DROP and ap > classical, (clean, ap, classical)


def test_large_textured_nuclei(image, bundled):
    img, lab, ign = image
    big, lab2 = A.rescale(img[:320, :320], lab[:320, :320], 2.5)
    ign2 = A.rescale(ign[:320, :320].astype(np.float32), ign[:320, :320].astype(np.int32), 2.5)[1] > 0
    big = A.add_chromatin(big, lab2, np.random.default_rng(1), texture=0.45, foci=8)
    ap = _ap(lab2, segment(big, bundled), ign2)
    classical = _ap(lab2, classical_segment(big, log_threshold=True), ign2)
    assert ap >= FLOOR_LARGE and ap > classical, (ap, classical)


def test_autofluorescent_grain_objects_are_dropped_by_their_score(image, bundled):
    # A grainy autofluorescent cytoplasm with orphan cell bodies: the false objects in it are the ones the
    # model doubts, and `min_score` drops them. Measured on this image: 0.691 with every object, 0.881
    # by default (classical log 0.767).
    img, lab, ign = image
    hard = A.add_cytoplasm(img, lab, np.random.default_rng(3), level=0.1, texture=1.0, orphans=0.3)
    every = _ap(lab, segment(hard, bundled, min_score=0.0), ign)
    ap = _ap(lab, segment(hard, bundled), ign)
    classical = _ap(lab, classical_segment(hard, log_threshold=True), ign)
    assert ap >= every + 0.1 and ap > classical, (every, ap, classical)


def test_small_nuclei_get_their_halo_trimmed(image, bundled):
    # At 0.25x (nuclei ~7 px) the network draws each nucleus with its blur halo; the bundled model's outline
    # level trims it (`instances.refine_outlines`). Measured on this image: AP@0.5 0.809 -> 0.829, mean matched
    # IoU 0.861 -> 0.886.
    from dataclasses import replace

    img, lab, ign = image
    small, lab4 = A.rescale(img, lab, 0.25)
    ign4 = A.rescale(ign.astype(np.float32), ign.astype(np.int32), 0.25)[1] > 0
    untrimmed = load_model("bundled")
    untrimmed.info = replace(untrimmed.info, outline_level=0.0)
    before = segment(small, untrimmed)
    after = segment(small, bundled)
    assert ((after > 0) <= (before > 0)).all()  # it only shrinks
    m0, m1 = (match_instances(lab4, p, 0.5, ignore=ign4) for p in (before, after))
    assert m1.ap > m0.ap and m1.mean_matched_iou > m0.mean_matched_iou + 0.015, (m0, m1)


def test_a_defocused_field_is_trimmed_to_its_nuclei_not_their_blur(image, bundled, monkeypatch):
    # A Gaussian blur of 0.15 x the nucleus diameter over the whole field: the trim takes the level where the
    # outlines are steepest (`instances.steepest_level`). Measured on this image: AP@0.5 0.741 -> 0.759, mean
    # matched IoU 0.819 -> 0.876 against the fixed level.
    from napari_unet.core import blockwise, instances

    img, lab, ign = image
    hard = A.defocus(img, lab, np.random.default_rng(4), 1.0, 0.15)
    chosen = match_instances(lab, segment(hard, bundled), 0.5, ignore=ign)
    monkeypatch.setattr(
        blockwise, "refine_outlines", lambda *a, **k: instances.refine_outlines(*a, **k, steepest=False)
    )
    fixed = match_instances(lab, segment(hard, bundled), 0.5, ignore=ign)
    assert chosen.ap >= fixed.ap and chosen.mean_matched_iou > fixed.mean_matched_iou + 0.03, (fixed, chosen)


def test_crowded_nuclei_stay_apart(image, bundled):
    # The image's own nuclei packed against each other to 35 % of the field (`appearance.crowd`), touching with
    # no dark line between them (121 -> 346 nuclei). Measured on this image: AP@0.5 0.785 against 0.913 clean
    # (classical log 0.243).
    img, lab, ign = image
    clean = _ap(lab, segment(img, bundled), ign)
    hard, lab2 = A.crowd(img, lab, np.random.default_rng(23), fill=0.35, overlap=(0.0, 0.15))
    ign2 = ign & (lab2 == 0)
    ap = _ap(lab2, segment(hard, bundled), ign2)
    classical = _ap(lab2, classical_segment(hard, log_threshold=True), ign2)
    assert ap >= clean - 0.2 and ap > classical + 0.3, (clean, ap, classical)  # a floor with margin for fp32 CPUs


def test_textured_nuclei_at_their_own_size(image, bundled):
    # The textured nuclei were ~35 px across, not enlarged: heterochromatin texture and bright foci on the
    # image's own 30 px nuclei. A known loss of the model (benchmarks/RESULTS.md, "Two new rows, and the suite
    # today"); the floor guards it from getting worse. Measured on this image with bf16: AP@0.5 0.913 clean, 0.855
    # textured (0.818 / 0.853 with seeds 0 / 1); with fp32 0.905 and 0.828. Classical on log intensities: 0.812,
    # too near to test.
    img, lab, ign = image
    clean = _ap(lab, segment(img, bundled), ign)
    hard = A.add_chromatin(img, lab, np.random.default_rng(27), texture=0.45, foci=8)
    ap = _ap(lab, segment(hard, bundled), ign)
    assert ap >= clean - FLOOR_DROP, (clean, ap)


def test_mitotic_figures_are_found(image, bundled):
    # A quarter of the nuclei replaced by metaphase plates and prometaphase clusters, 2-5x the nuclear signal
    # (`appearance.mitotic_figures`): smaller, brighter and more ragged than any nucleus. Measured on this image with
    # bf16: AP@0.5 0.869 against 0.913 clean (seeds 0 / 1: 0.858 / 0.892); classical on log intensities 0.733.
    img, lab, ign = image
    clean = _ap(lab, segment(img, bundled), ign)
    hard, lab2 = A.mitotic_figures(img, lab, np.random.default_rng(32), fraction=0.25)
    ign2 = ign & (lab2 == 0)
    ap = _ap(lab2, segment(hard, bundled), ign2)
    classical = _ap(lab2, classical_segment(hard, log_threshold=True), ign2)
    assert ap >= clean - FLOOR_DROP and ap > classical + 0.05, (clean, ap, classical)
