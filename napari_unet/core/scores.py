"""How much the model believes each object it found: per-object confidence scores and a doubt map.

Everything here comes from the one forward pass that segmentation makes anyway (the uint8 class
probabilities), so scoring costs a few bincounts over the labels, not another pass of the network.
`benchmarks/object_scores.py` measures how well each measure ranks wrong objects below right ones
(AUROC) and what it costs; `SCORE` names the one `segment` reports.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .losses import BACKGROUND, INTERIOR

#: The measure that `segment` reports (chosen in benchmarks/RESULTS.md, "Object confidence").
SCORE = "certainty"
#: `segment` drops the objects of a plane scored below `MIN_SCORE`, or below `OF_MEDIAN` x the plane's
#: median score where that is lower (a plane the model is unsure of throughout, e.g. tiny or blurred
#: nuclei, keeps its typical objects): benchmarks/RESULTS.md, "Dropping the objects the model doubts".
MIN_SCORE = 0.3
OF_MEDIAN = 0.5


def score_floor(scores: np.ndarray, min_score: float = MIN_SCORE) -> float:
    """The score below which a plane's objects are dropped, given all their `scores` (0 keeps all)."""
    return min(min_score, OF_MEDIAN * float(np.median(scores))) if len(scores) else 0.0


#: ... unless the object is this many times as bright as the plane's median object (root mean square of the
#: normalised intensity over its pixels): condensed chromatin the network is unsure of, a dividing cell's, is a
#: nucleus, where the doubtful objects the floor is for (autofluorescent grain, cell bodies) are dimmer than nuclei
#: (benchmarks/RESULTS.md, "Bright objects kept under the floor").
BRIGHT_KEEP = 1.5


def kept_objects(scores: np.ndarray, min_score: float = MIN_SCORE, rms: np.ndarray | None = None) -> np.ndarray:
    """Which of a plane's objects `segment` keeps, given all their `scores` and, where known, the root mean square
    of each one's normalised intensity (`rms`): those at or above `score_floor`, and the bright ones below it."""
    keep = scores >= score_floor(scores, min_score)
    if rms is not None and len(rms) and min_score > 0:
        keep |= rms >= BRIGHT_KEEP * float(np.median(rms))
    return keep


def _means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of `values` over each label 1..n (0 where a label has no pixel)."""
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = np.bincount(labels.ravel(), weights=values.ravel().astype(np.float64), minlength=n + 1)[1:]
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


MEASURES = ("interior", "certainty", "edge", "core")


def object_measures(
    labels: np.ndarray, probs: np.ndarray, which: tuple[str, ...] = MEASURES
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Candidate confidence measures of every object of a 2D labels image.

    Args:
        labels: (H, W) int instance labels.
        probs: (3, H, W) class probabilities, uint8 (255 = 1) or float.
        which: The measures to compute (segmentation computes only `SCORE`).

    Returns:
        (ids, {measure: scores in [0, 1] aligned with ids}); higher = more likely a right, whole object.
        * ``interior``: mean interior probability over the object;
        * ``certainty``: mean of 1 - normalised softmax entropy over the object;
        * ``edge``: how sharply the object stands out: mean foreground probability in the object's
          inner half minus that in a ring just outside it, which is low for an object cut out of a
          larger blob (a split or a merge) or one the network barely sees;
        * ``core``: fraction of the object's pixels that are confident interior (p > 0.5).
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids, {k: np.zeros(0) for k in which}
    # Compact ids 1..n so that bincounts stay small whatever the label values.
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    compact = lut[labels]
    n = ids.size
    p = probs.astype(np.float32) / (255.0 if probs.dtype == np.uint8 else 1.0)
    out: dict[str, np.ndarray] = {}
    if "interior" in which:
        out["interior"] = _means(p[INTERIOR], compact, n)
    if "certainty" in which:
        out["certainty"] = _means(certainty_map(p), compact, n)
    if "core" in which:
        out["core"] = _means((p[INTERIOR] > 0.5).astype(np.float32), compact, n)
    if "edge" in which:
        # Inner half: pixels deeper than half the object's largest depth; ring: 1-3 px outside it.
        fg = 1.0 - p[BACKGROUND]
        depth = ndi.distance_transform_edt(compact > 0)
        max_depth = np.asarray(ndi.maximum(depth, compact, index=np.arange(1, n + 1)))
        inner = (compact > 0) & (depth >= 0.5 * max_depth[np.maximum(compact - 1, 0)])
        inside = _means(np.where(inner, fg, 0.0), np.where(inner, compact, 0), n)
        grown = ndi.grey_dilation(compact, size=(7, 7))
        ring = (compact == 0) & (grown > 0)
        outside = _means(np.where(ring, fg, 0.0), np.where(ring, grown, 0), n)
        out["edge"] = np.clip(inside - outside, 0.0, 1.0)
    return ids, out


def _plogp(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1.0)
    return q * np.log(q)


#: p log p / log 3 of every uint8 probability: the entropy of uint8 probabilities is three table lookups
#: (measured 7x faster than the float formula on a 2048^2 plane, 0.20 -> 0.03 s; same values to 1e-6).
_PLOGP_U8 = (_plogp(np.arange(256, dtype=np.float32) / 255.0) / np.float32(np.log(3.0))).astype(np.float32)


def certainty_map(probs: np.ndarray) -> np.ndarray:
    """Per-pixel certainty in [0, 1]: 1 minus the normalised softmax entropy of the classes (float32)."""
    if probs.dtype == np.uint8:
        out = _PLOGP_U8[probs[0]]
        for c in range(1, probs.shape[0]):
            out += _PLOGP_U8[probs[c]]
        return out + np.float32(1.0)
    return 1.0 + _plogp(probs.astype(np.float32)).sum(0) / np.float32(np.log(3.0))


def object_scores(labels: np.ndarray, probs: np.ndarray, measure: str = SCORE) -> dict[int, float]:
    """{label id: confidence in [0, 1]} of every object of a 2D labels image (see `object_measures`)."""
    ids, measures = object_measures(labels, probs, (measure,))
    return {int(i): round(float(s), 4) for i, s in zip(ids, measures[measure])}


def doubt_map(probs: np.ndarray) -> np.ndarray:
    """Per-pixel doubt, uint8 (255 = most doubtful): the normalised softmax entropy of the classes."""
    return np.round(255 * np.clip(1.0 - certainty_map(probs), 0, 1)).astype(np.uint8)
