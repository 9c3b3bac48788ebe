"""Instance-segmentation metrics: object matching and average precision at IoU thresholds.

The definitions follow the StarDist (Schmidt et al., 2018) and Cellpose (Stringer et al., 2021)
papers. A predicted object and a ground-truth object *match* when their intersection over union
(IoU) is strictly greater than the threshold ``t``; each object takes part in at most one match.
Then, for one image (or summed over a data set)::

    AP(t) = TP / (TP + FP + FN)

where TP is the number of matched pairs, FP the number of unmatched predicted objects and FN the
number of unmatched ground-truth objects. For ``t >= 0.5`` an object can have at most one partner
with IoU > t, so the matching is unique and found without any search. For ``t < 0.5`` the number of
matches is maximised by optimal assignment (:func:`scipy.optimize.linear_sum_assignment`, ties
broken towards the larger total IoU), solved separately on each connected group of candidate pairs.

The IoU matrix is never materialised densely. Pixel pairs ``(true id, pred id)`` are run-length
compressed chunk by chunk along the flattened image (objects are spatially compact, so a chunk holds
far fewer runs than pixels) and the runs are counted with :func:`numpy.unique`. This handles
8192 x 8192 label images with thousands of objects in a few seconds and bounded memory. Labels may
be any integer (or boolean) dtype of any dimensionality; ids need not be consecutive; ``0`` is
background.

Conventions:
    * Both images empty (no objects): TP = FP = FN = 0, and precision, recall, F1 and AP are 1.0.
    * Exactly one image empty: AP, precision, recall and F1 are 0.0.
    * ``mean_matched_iou`` is 0.0 when nothing is matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "ERROR_KINDS",
    "Matching",
    "aggregate",
    "average_precision",
    "error_kinds",
    "match_instances",
    "object_ids",
    "per_object_iou",
]

# Pixels per chunk for the run-length pass (int64 codes: 32 MiB per chunk).
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Matching:
    """Result of matching predicted to ground-truth instances at one IoU threshold.

    Attributes:
        tp: Number of matched (true, predicted) pairs.
        fp: Number of predicted objects without a match (ignored objects excluded).
        fn: Number of ground-truth objects without a match.
        n_true: Number of ground-truth objects.
        n_pred: Number of predicted objects taking part (after dropping ignored ones).
        mean_matched_iou: Mean IoU over the matched pairs (0.0 when ``tp == 0``).
        threshold: The IoU threshold ``t`` (pairs match when IoU > t).
        n_ignored: Number of predicted objects dropped because they lie mostly inside the
            ``ignore`` region (see :func:`match_instances`).
    """

    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_matched_iou: float
    threshold: float = 0.5
    n_ignored: int = 0

    def _ratio(self, num: int, den: int) -> float:
        if self.n_true == 0 and self.n_pred == 0:
            return 1.0
        return num / den if den > 0 else 0.0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when both sides are empty, 0.0 when no predictions."""
        return self._ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when both sides are empty, 0.0 when no ground truth."""
        return self._ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 when both sides are empty."""
        return self._ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def ap(self) -> float:
        """Average precision as in StarDist/Cellpose: TP / (TP + FP + FN); 1.0 when both empty."""
        return self._ratio(self.tp, self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields and the derived scores as a plain dictionary."""
        d: dict[str, float | int] = asdict(self)
        d.update(precision=self.precision, recall=self.recall, f1=self.f1, ap=self.ap)
        return d


# --------------------------------------------------------------------------------------------
# Sparse contingency
# --------------------------------------------------------------------------------------------


def _as_labels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x.view(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label image, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.signedinteger) and x.size and x.min() < 0:
        raise ValueError(f"{name} contains negative labels")
    return x


def _compact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map the ids of ``x`` to 0..n keeping 0 as background (only for huge id values).

    Returns:
        ``(compact, lut)``: the compacted int64 image and the original id of each compact id.
    """
    ids, inv = np.unique(x, return_inverse=True)
    inv = inv.reshape(x.shape).astype(np.int64)
    if ids[0] != 0:
        inv += 1
        ids = np.concatenate((np.zeros(1, ids.dtype), ids))
    return inv, ids


def _pair_counts(a: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count pixels of every co-occurring label pair ``(a, b)``, background included.

    ``b=None`` counts the labels of ``a`` alone (the returned ``b_ids`` are then all 0).

    Returns:
        ``(a_ids, b_ids, counts)``: one entry per distinct pair present in the images.
    """
    if b is not None and a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    a_max = int(a.max())
    b_max = 0 if b is None else int(b.max())
    a_lut = b_lut = None
    if (a_max + 1) * (b_max + 1) >= 2**62:
        a, a_lut = _compact(a)
        a_max = int(a.max())
        if b is not None:
            b, b_lut = _compact(b)
            b_max = int(b.max())
    base = b_max + 1
    af = a.reshape(-1)
    bf = None if b is None else b.reshape(-1)
    codes_l: list[np.ndarray] = []
    lens_l: list[np.ndarray] = []
    for s in range(0, af.size, _CHUNK):
        c = af[s : s + _CHUNK].astype(np.int64)
        if bf is not None:
            c *= base
            c += bf[s : s + _CHUNK]
        starts = np.flatnonzero(c[1:] != c[:-1]) + 1
        starts = np.concatenate(([0], starts))
        codes_l.append(c[starts])
        lens_l.append(np.diff(np.append(starts, c.size)))
    codes = np.concatenate(codes_l)
    lens = np.concatenate(lens_l)
    uniq, inv = np.unique(codes, return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=lens, minlength=uniq.size).astype(np.int64)
    a_ids, b_ids = uniq // base, uniq % base
    # Huge ids were compacted: give back the original ids (same order, as the map is monotone).
    if a_lut is not None:
        a_ids = a_lut[a_ids]
    if b_lut is not None:
        b_ids = b_lut[b_ids]
    return a_ids, b_ids, counts


class _Overlap:
    """Object ids, areas and sparse pairwise IoU of two label images."""

    def __init__(self, true: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None):
        t = _as_labels(true, "true")
        p = _as_labels(pred, "pred")
        ti, pi, cnt = _pair_counts(t, p)

        self.true_ids, t_inv = np.unique(ti, return_inverse=True)
        t_area = np.bincount(t_inv, weights=cnt).astype(np.int64)
        self.pred_ids, p_inv = np.unique(pi, return_inverse=True)
        p_area = np.bincount(p_inv, weights=cnt).astype(np.int64)

        # Drop background (id 0 sorts first when present).
        t_off = 1 if self.true_ids.size and self.true_ids[0] == 0 else 0
        p_off = 1 if self.pred_ids.size and self.pred_ids[0] == 0 else 0
        self.true_ids, self.true_area = self.true_ids[t_off:], t_area[t_off:]
        self.pred_ids, self.pred_area = self.pred_ids[p_off:], p_area[p_off:]
        fg = (ti > 0) & (pi > 0)
        self.row = t_inv[fg] - t_off
        self.col = p_inv[fg] - p_off
        inter = cnt[fg]

        self.n_ignored = 0
        if ignore is not None:
            ign = np.asarray(ignore)
            if ign.shape != p.shape:
                raise ValueError(f"ignore shape {ign.shape} does not match {p.shape}")
            ig, pj, c = _pair_counts((ign != 0).view(np.uint8), p)
            sel = (ig == 1) & (pj > 0)
            inside = np.zeros(self.pred_ids.size, np.int64)
            inside[np.searchsorted(self.pred_ids, pj[sel])] = c[sel]
            drop = 2 * inside > self.pred_area
            if drop.any():
                self.n_ignored = int(drop.sum())
                keep = ~drop
                new_index = np.cumsum(keep) - 1
                pair_keep = keep[self.col]
                self.row, inter = self.row[pair_keep], inter[pair_keep]
                self.col = new_index[self.col[pair_keep]]
                self.pred_ids, self.pred_area = self.pred_ids[keep], self.pred_area[keep]

        self.inter = inter
        union = self.true_area[self.row] + self.pred_area[self.col] - inter
        self.iou = inter / union

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def match(self, threshold: float) -> Matching:
        """Match objects at one IoU threshold (IoU > threshold)."""
        threshold = float(threshold)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"IoU threshold must be in [0, 1), got {threshold}")
        cand = np.flatnonzero(self.iou > threshold)
        rows, cols, ious = self.row[cand], self.col[cand], self.iou[cand]
        unique = np.unique(rows).size == rows.size and np.unique(cols).size == cols.size
        if not unique:  # only possible for threshold < 0.5
            ious = _optimal_assignment(rows, cols, ious)
        tp = int(ious.size)
        return Matching(
            tp=tp,
            fp=self.n_pred - tp,
            fn=self.n_true - tp,
            n_true=self.n_true,
            n_pred=self.n_pred,
            mean_matched_iou=float(ious.mean()) if tp else 0.0,
            threshold=threshold,
            n_ignored=self.n_ignored,
        )


def _optimal_assignment(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """Maximum-cardinality matching of candidate pairs, ties broken by total IoU.

    Solved independently on each connected component of the bipartite candidate graph.

    Returns:
        The IoUs of the matched pairs.
    """
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    nr, nc = r_ids.size, c_ids.size
    graph = coo_matrix((np.ones(r.size), (r, nr + c)), shape=(nr + nc, nr + nc))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[r]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    matched: list[np.ndarray] = []
    for grp in np.split(order, bounds):
        if grp.size == 1:
            matched.append(ious[grp])
            continue
        gr_ids, gr = np.unique(r[grp], return_inverse=True)
        gc_ids, gc = np.unique(c[grp], return_inverse=True)
        k = min(gr_ids.size, gc_ids.size)
        score = np.zeros((gr_ids.size, gc_ids.size))
        iou_m = np.zeros_like(score)
        iou_m[gr, gc] = ious[grp]
        # One point per match, plus a tie-breaking bonus < 1 in total.
        score[gr, gc] = 1.0 + ious[grp] / (2 * k)
        ri, ci = linear_sum_assignment(score, maximize=True)
        ok = score[ri, ci] > 0
        matched.append(iou_m[ri[ok], ci[ok]])
    return np.concatenate(matched) if matched else np.zeros(0)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def match_instances(
    true: np.ndarray,
    pred: np.ndarray,
    iou_threshold: float = 0.5,
    *,
    ignore: np.ndarray | None = None,
) -> Matching:
    """Match predicted to ground-truth instances and count TP, FP and FN.

    Args:
        true: Ground-truth instance labels (integer or bool array, any dimensionality; 0 is
            background; ids need not be consecutive).
        pred: Predicted instance labels, same shape as ``true``.
        iou_threshold: Objects match when their IoU is strictly greater than this, in [0, 1).
        ignore: Optional mask (bool or labels; non-zero = ignore) of the same shape. Predicted
            objects with more than 50 % of their area inside it are dropped before matching:
            they count neither as TP nor as FP (``Matching.n_ignored`` counts them). Ground-truth
            objects are never dropped. Used e.g. for micronuclei, which nuclei labels leave out.

    Returns:
        The :class:`Matching`. When both images are empty, AP, precision, recall and F1 are
        1.0 by convention; when only one is empty they are 0.0.

    Raises:
        ValueError: On shape mismatch, negative labels or a threshold outside [0, 1).
        TypeError: If a label image is not of integer or bool dtype.
    """
    return _Overlap(true, pred, ignore).match(iou_threshold)


#: What happened to each ground-truth object (`error_kinds`), then the predicted objects on background.
ERROR_KINDS = ("matched", "merged", "split", "missed", "outline", "false")


def error_kinds(true: np.ndarray, pred: np.ndarray, *, ignore: np.ndarray | None = None) -> dict[str, int]:
    """Why AP@0.5 is what it is: every ground-truth object sorted into one kind, and the false objects counted.

    A true object is, in this order:
        * ``matched``: matched at IoU > 0.5 (the TP of :func:`match_instances` at 0.5);
        * ``merged``: a predicted object covers at least half of it and half of another true object;
        * ``split``: two or more predicted objects each cover at least a fifth of it;
        * ``missed``: predicted objects cover less than half of it in all;
        * ``outline``: the rest, one predicted object over most of it with IoU <= 0.5 (far too large or small).
    ``false`` counts the unmatched predicted objects that cover less than a fifth of every true object (the
    other unmatched ones are the parts of the splits, merges and outlines above). Ignored predictions (see
    :func:`match_instances`) take no part.

    Returns:
        ``{kind: count}`` for every kind of `ERROR_KINDS`; the first five sum to the number of true objects.
    """
    ov = _Overlap(true, pred, ignore)
    nt, npred = ov.n_true, ov.n_pred
    cover = ov.inter / ov.true_area[ov.row]  # share of the true object under the predicted one
    matched = ov.iou > 0.5
    is_matched = np.zeros(nt, bool)
    is_matched[ov.row[matched]] = True
    # A predicted object that covers half of two or more true objects holds merged nuclei.
    halves = cover >= 0.5
    holds = np.bincount(ov.col[halves], minlength=npred)
    merged = np.zeros(nt, bool)
    merged[ov.row[halves & (holds[ov.col] >= 2)]] = True
    pieces = np.bincount(ov.row[cover >= 0.2], minlength=nt)
    covered = np.bincount(ov.row, weights=cover, minlength=nt)
    kinds = np.full(nt, "outline", dtype=object)
    kinds[covered < 0.5] = "missed"
    kinds[pieces >= 2] = "split"
    kinds[merged] = "merged"
    kinds[is_matched] = "matched"
    part_of = np.zeros(npred, bool)  # matched, or a fifth or more of some true object
    part_of[ov.col[matched | (cover >= 0.2)]] = True
    out = {k: int(np.sum(kinds == k)) for k in ERROR_KINDS[:-1]}
    out["false"] = int(np.sum(~part_of))
    return out


def average_precision(
    true: np.ndarray,
    pred: np.ndarray,
    thresholds: float | Sequence[float] = (0.5,),
    *,
    ignore: np.ndarray | None = None,
) -> np.ndarray | float:
    """Average precision TP / (TP + FP + FN) of one image at one or more IoU thresholds.

    The overlap of the two label images is computed once and reused for every threshold.

    Args:
        true: Ground-truth instance labels.
        pred: Predicted instance labels, same shape.
        thresholds: A single IoU threshold, or a sequence of them.
        ignore: Optional ignore mask, as in :func:`match_instances`.

    Returns:
        A float for a scalar ``thresholds``; otherwise an array with one AP per threshold (also
        for a one-element sequence such as the default ``(0.5,)``). Both images empty gives 1.0.
    """
    ov = _Overlap(true, pred, ignore)
    if np.ndim(thresholds) == 0:
        return ov.match(float(thresholds)).ap  # type: ignore[arg-type]
    return np.array([ov.match(t).ap for t in thresholds], dtype=float)  # type: ignore[union-attr]


def aggregate(matchings: Sequence[Matching]) -> Matching:
    """Data-set-level matching: sums TP, FP, FN and object counts over images.

    The AP of the result is sum(TP) / sum(TP + FP + FN), which weights images by their number
    of objects (unlike the mean of per-image APs). ``mean_matched_iou`` is the TP-weighted mean.

    Args:
        matchings: Per-image results, all at the same threshold.

    Returns:
        The summed :class:`Matching`.

    Raises:
        ValueError: If ``matchings`` is empty or mixes thresholds.
    """
    if len(matchings) == 0:
        raise ValueError("aggregate() needs at least one Matching")
    thresholds = {m.threshold for m in matchings}
    if len(thresholds) != 1:
        raise ValueError(f"cannot aggregate matchings at different thresholds: {thresholds}")
    tp = sum(m.tp for m in matchings)
    iou_sum = sum(m.mean_matched_iou * m.tp for m in matchings)
    return Matching(
        tp=tp,
        fp=sum(m.fp for m in matchings),
        fn=sum(m.fn for m in matchings),
        n_true=sum(m.n_true for m in matchings),
        n_pred=sum(m.n_pred for m in matchings),
        mean_matched_iou=iou_sum / tp if tp else 0.0,
        threshold=thresholds.pop(),
        n_ignored=sum(m.n_ignored for m in matchings),
    )


def object_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids of a label image: the order used by :func:`per_object_iou`.

    Args:
        labels: Instance labels (integer or bool).

    Returns:
        1-D array of the ids present, ascending, background excluded (int64, or uint64 for
        ids beyond the int64 range).
    """
    lab = _as_labels(labels, "labels")
    ids, _, _ = _pair_counts(lab, None)
    ids = ids[ids > 0]
    return ids if ids.dtype == np.uint64 else ids.astype(np.int64)


def per_object_iou(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of every object with any object of the other image.

    Useful to pick the worst-segmented objects (e.g. for a simulated annotator).

    Args:
        true: Ground-truth instance labels.
        pred: Predicted instance labels, same shape.

    Returns:
        ``(true_best, pred_best)``: float arrays of length n_true and n_pred, in ascending id
        order (see :func:`object_ids`); 0.0 for an object that overlaps nothing.
    """
    ov = _Overlap(true, pred)
    true_best = np.zeros(ov.n_true)
    pred_best = np.zeros(ov.n_pred)
    np.maximum.at(true_best, ov.row, ov.iou)
    np.maximum.at(pred_best, ov.col, ov.iou)
    return true_best, pred_best


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative
    (ties count half; Mann-Whitney U). NaN when either class is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, float)
    y = np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
