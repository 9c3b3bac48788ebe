"""Tests for napari_unet.core.metrics (and the classical baseline's splitting of touching discs)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.metrics import (
    Matching,
    aggregate,
    average_precision,
    error_kinds,
    match_instances,
    object_ids,
    per_object_iou,
)


def _square_labels() -> np.ndarray:
    """Four 10x10 squares with non-consecutive ids on a 64x64 canvas."""
    lab = np.zeros((64, 64), np.uint16)
    lab[2:12, 2:12] = 3
    lab[2:12, 30:40] = 17
    lab[40:50, 5:15] = 200
    lab[40:50, 40:50] = 9
    return lab


def test_identical_labels_ap_one() -> None:
    lab = _square_labels()
    m = match_instances(lab, lab)
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (4, 0, 0, 4, 4)
    assert m.ap == m.precision == m.recall == m.f1 == 1.0
    assert m.mean_matched_iou == pytest.approx(1.0)
    np.testing.assert_allclose(average_precision(lab, lab, (0.5, 0.75, 0.9)), 1.0)
    assert average_precision(lab, lab, 0.5) == 1.0


def test_shifted_object_becomes_fp_and_fn() -> None:
    true = _square_labels()
    pred = true.copy()
    pred[pred == 17] = 0
    pred[2:12, 35:45] = 17  # shifted by 5 px: IoU = 50 / 150 = 1/3
    m = match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (3, 1, 1)
    assert m.ap == pytest.approx(3 / 5)
    assert match_instances(true, pred, 0.3).tp == 4  # 1/3 > 0.3 -> matched


def test_permuted_ids_do_not_change_results() -> None:
    rng = np.random.default_rng(0)
    true = _square_labels()
    pred = true.copy()
    pred[pred == 17] = 0
    pred[3:13, 31:41] = 17
    perm_true = np.zeros(256, np.int32)
    perm_true[[3, 17, 200, 9]] = rng.permutation([5, 1000, 7, 42])
    perm_pred = np.zeros(256, np.int64)
    perm_pred[[3, 17, 200, 9]] = rng.permutation([1, 2, 3, 4])
    for t in (0.1, 0.5, 0.75):
        a = match_instances(true, pred, t)
        b = match_instances(perm_true[true], perm_pred[pred], t)
        assert (a.tp, a.fp, a.fn, a.n_true, a.n_pred) == (b.tp, b.fp, b.fn, b.n_true, b.n_pred)
        assert a.mean_matched_iou == pytest.approx(b.mean_matched_iou)
    ta, pa = per_object_iou(true, pred)
    tb, pb = per_object_iou(perm_true[true], perm_pred[pred])
    np.testing.assert_allclose(np.sort(ta), np.sort(tb))
    np.testing.assert_allclose(np.sort(pa), np.sort(pb))


def test_empty_cases() -> None:
    empty = np.zeros((20, 20), np.int32)
    lab = np.zeros((20, 20), np.int32)
    lab[5:10, 5:10] = 1
    both = match_instances(empty, empty)
    assert (both.tp, both.fp, both.fn) == (0, 0, 0)
    assert both.ap == both.f1 == both.precision == both.recall == 1.0
    no_pred = match_instances(lab, empty)
    assert (no_pred.tp, no_pred.fp, no_pred.fn) == (0, 0, 1)
    assert no_pred.ap == no_pred.precision == no_pred.recall == 0.0
    no_true = match_instances(empty, lab)
    assert (no_true.tp, no_true.fp, no_true.fn) == (0, 1, 0)
    assert no_true.ap == 0.0
    assert average_precision(empty, empty, 0.5) == 1.0
    assert per_object_iou(empty, lab)[0].shape == (0,)
    np.testing.assert_array_equal(per_object_iou(empty, lab)[1], [0.0])


def test_ignore_mask_drops_predictions_mostly_inside() -> None:
    true = np.zeros((40, 40), np.int32)
    true[2:12, 2:12] = 1
    pred = true.copy()
    pred[20:24, 20:24] = 2  # a micronucleus, fully in the ignore region
    pred[30:34, 30:34] = 3  # 16 px, only 4 px (25 %) inside the ignore region
    ignore = np.zeros((40, 40), bool)
    ignore[19:25, 19:25] = True
    ignore[30:32, 30:32] = True
    plain = match_instances(true, pred)
    assert (plain.tp, plain.fp, plain.fn, plain.n_ignored) == (1, 2, 0, 0)
    m = match_instances(true, pred, ignore=ignore)
    assert (m.tp, m.fp, m.fn, m.n_pred, m.n_ignored) == (1, 1, 0, 2, 1)
    # A label image works as ignore mask too; the true objects are never dropped.
    m2 = match_instances(true, pred, ignore=np.where(ignore, 7, 0).astype(np.uint16))
    assert m2 == m
    assert match_instances(pred, pred, ignore=ignore).n_true == 3


def test_aggregate_sums_counts() -> None:
    a = Matching(tp=3, fp=1, fn=2, n_true=5, n_pred=4, mean_matched_iou=0.8)
    b = Matching(tp=1, fp=0, fn=0, n_true=1, n_pred=1, mean_matched_iou=0.6, n_ignored=2)
    agg = aggregate([a, b])
    assert (agg.tp, agg.fp, agg.fn, agg.n_true, agg.n_pred, agg.n_ignored) == (4, 1, 2, 6, 5, 2)
    assert agg.ap == pytest.approx(4 / 7)  # not the mean of per-image APs (0.5 and 1.0)
    assert agg.mean_matched_iou == pytest.approx((3 * 0.8 + 0.6) / 4)
    assert agg.f1 == pytest.approx(8 / 11)
    with pytest.raises(ValueError):
        aggregate([a, Matching(1, 0, 0, 1, 1, 0.9, threshold=0.75)])
    with pytest.raises(ValueError):
        aggregate([])


def test_hand_computed_three_objects() -> None:
    true = np.zeros((30, 30), np.int32)
    true[0:10, 0:10] = 1  # area 100
    true[0:10, 15:25] = 2  # area 100
    true[20:30, 0:10] = 3  # area 100
    pred = np.zeros((30, 30), np.int32)
    pred[0:10, 0:9] = 5  # inter 90, union 100 -> IoU 0.9
    pred[0:10, 19:29] = 6  # inter 60, union 140 -> IoU 3/7 ~ 0.4286
    pred[24:30, 0:10] = 4  # inter 60, union 100 -> IoU 0.6
    pred[25:30, 20:30] = 8  # no overlap -> FP
    m50 = match_instances(true, pred, 0.5)
    assert (m50.tp, m50.fp, m50.fn, m50.n_true, m50.n_pred) == (2, 2, 1, 3, 4)
    assert m50.ap == pytest.approx(2 / 5)
    assert m50.precision == pytest.approx(2 / 4)
    assert m50.recall == pytest.approx(2 / 3)
    assert m50.mean_matched_iou == pytest.approx((0.9 + 0.6) / 2)
    m40 = match_instances(true, pred, 0.4)
    assert (m40.tp, m40.fp, m40.fn) == (3, 1, 0)
    assert m40.mean_matched_iou == pytest.approx((0.9 + 0.6 + 3 / 7) / 3)
    np.testing.assert_allclose(average_precision(true, pred, [0.4, 0.5, 0.65, 0.95]), [3 / 4, 2 / 5, 1 / 6, 0.0])
    true_best, pred_best = per_object_iou(true, pred)
    np.testing.assert_allclose(true_best, [0.9, 3 / 7, 0.6])  # ids 1, 2, 3
    np.testing.assert_allclose(pred_best, [0.6, 0.9, 3 / 7, 0.0])  # ids 4, 5, 6, 8
    np.testing.assert_array_equal(object_ids(pred), [4, 5, 6, 8])


def test_low_threshold_uses_optimal_assignment() -> None:
    # Greedy best-IoU matching would pair true 1 with pred 2 (IoU 0.625) and leave true 2 and
    # pred 1 unmatched; the optimal assignment below 0.5 maximises the number of matches.
    true = np.zeros((10, 30), np.int32)
    true[:, 0:20] = 1
    true[:, 20:30] = 2
    pred = np.zeros((10, 30), np.int32)
    pred[:, 0:5] = 1  # IoU with true 1: 50/200 = 0.25
    pred[:, 5:24] = 2  # IoU with true 1: 150/240 = 0.625, with true 2: 40/250 = 0.16
    m = match_instances(true, pred, 0.15)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.mean_matched_iou == pytest.approx((0.25 + 0.16) / 2)
    m50 = match_instances(true, pred, 0.5)
    assert (m50.tp, m50.fp, m50.fn) == (1, 1, 1)
    assert m50.mean_matched_iou == pytest.approx(0.625)


def test_input_validation() -> None:
    a = np.zeros((5, 5), np.int32)
    with pytest.raises(ValueError):
        match_instances(a, np.zeros((5, 6), np.int32))
    with pytest.raises(TypeError):
        match_instances(a, a.astype(float))
    with pytest.raises(ValueError):
        match_instances(a - 1, a)
    with pytest.raises(ValueError):
        match_instances(a, a, 1.0)


def test_bool_and_3d_labels() -> None:
    vol = np.zeros((4, 10, 10), bool)
    vol[1:3, 2:6, 2:6] = True
    m = match_instances(vol, vol.astype(np.uint8) * 9)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)


def test_error_kinds_sort_every_true_object_once() -> None:
    true = np.zeros((60, 120), np.int32)
    pred = np.zeros_like(true)
    true[2:12, 2:12] = pred[2:12, 2:12] = 1  # matched
    true[20:30, 2:12], true[20:30, 12:22], pred[20:30, 2:22] = 2, 3, 2  # two nuclei in one object
    true[40:50, 2:12], pred[40:50, 2:7], pred[40:50, 7:12] = 4, 3, 4  # one nucleus in two halves
    true[2:12, 30:40] = 5  # nothing on it
    true[20:26, 30:36], pred[18:34, 28:44] = 6, 5  # one object 7x its size: IoU 0.14
    pred[45:55, 60:70] = 6  # on the background
    pred[2:6, 80:84] = 7  # on the background, inside the ignore mask
    ignore = np.zeros(true.shape, bool)
    ignore[0:8, 78:86] = True
    kinds = error_kinds(true, pred, ignore=ignore)
    assert kinds == {"matched": 1, "merged": 2, "split": 1, "missed": 1, "outline": 1, "false": 1}
    m = match_instances(true, pred, 0.5, ignore=ignore)
    assert kinds["matched"] == m.tp and sum(kinds[k] for k in ("merged", "split", "missed", "outline")) == m.fn
    assert error_kinds(true, pred)["false"] == 2  # the ignored object counts when nothing is ignored
    assert error_kinds(true, np.zeros_like(true)) == dict(error_kinds(true, true), matched=0, missed=6)
    assert error_kinds(np.zeros_like(true), pred)["false"] == 7


def test_classical_segment_splits_two_touching_discs() -> None:
    from napari_unet.core.classical import classical_segment

    yy, xx = np.mgrid[:128, :128]
    discs = ((yy - 64) ** 2 + (xx - 48) ** 2 < 18**2) | ((yy - 64) ** 2 + (xx - 80) ** 2 < 18**2)
    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(discs.astype(float) * 200.0, 2.0) + 10.0
    image = (image + rng.normal(0, 3, image.shape)).clip(0, 255).astype(np.uint8)
    labels = classical_segment(image)
    assert labels.dtype == np.int32
    assert labels.shape == image.shape
    assert labels.max() == 2
    assert set(np.unique(labels[64, [40, 88]])) == {1, 2}
    truth = np.zeros(image.shape, np.int32)
    truth[discs] = np.where(xx[discs] < 64, 1, 2)
    assert match_instances(truth, labels, 0.75).tp == 2


def test_classical_segment_blank_image() -> None:
    from napari_unet.core.classical import classical_segment

    assert classical_segment(np.zeros((32, 32), np.uint8)).max() == 0
    with pytest.raises(ValueError):
        classical_segment(np.zeros((3, 32, 32)))
