"""The model choices the widgets offer: the bundled model and the saved versions (newest first)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelChoice:
    """One entry of a model combo box: what `load_model` takes (`spec`) and what the user reads."""

    spec: str
    label: str
    tooltip: str = ""


HELD_OUT = "held-out"
TRAINING_PIXELS = "on training pixels"


def metric_name(metrics: dict | None) -> str:
    """What a run's validation metric was measured on, in the widgets' words.

    The engine validates on the training pixels when too few trusted pixels can be held out
    (`metrics["held_out"]` is then False; versions saved before that field say so in
    `metrics["val_metric"]`), and calling the figure "held-out" would flatter it.
    """
    m = metrics or {}
    if "held_out" in m:
        return HELD_OUT if m["held_out"] else TRAINING_PIXELS
    return TRAINING_PIXELS if "training pixels" in str(m.get("val_metric", "")) else HELD_OUT


def metric_change(metrics: dict | None) -> str:
    """E.g. "held-out 0.612 -> 0.705" (or "on training pixels ..."); "" without both figures."""
    m = metrics or {}
    before, after = m.get("val_before"), m.get("val_after")
    if before is None or after is None:
        return ""
    return f"{metric_name(m)} {before:.3f} -> {after:.3f}"


def model_choices() -> list[ModelChoice]:
    """Bundled first, then saved versions newest first; the current one is marked."""
    from ..core import versions

    out = [ModelChoice("bundled", "bundled", "the model shipped with napari-unet")]
    try:
        listed = versions.list_versions()
    except OSError:
        listed = []
    for v in reversed(listed):
        if v.problem and not v.provenance:  # unreadable: it cannot be loaded (models list flags it)
            continue
        label = f"{v.name}{'  (current)' if v.current else ''}"
        change = metric_change(v.metrics) if v.val_change else ""
        tip = "; ".join(t for t in (f"from {v.parent}" if v.parent else "", change, v.created) if t)
        out.append(ModelChoice(v.name, label, tip))
    return out


def current_spec() -> str:
    """What "current" points at: a version name, or "bundled" (with a warning where the pointer is corrupt,
    so that the combo's "bundled" is not taken for the user's own choice)."""
    from ..core import versions

    try:
        return versions.current_name(strict=True) or "bundled"
    except versions.ModelFileError as exc:
        from . import notify

        notify.warning(str(exc))
        return "bundled"


def set_current(spec: str) -> None:
    """Make `spec` (a version name or "bundled") the current model, for the widgets and the CLI."""
    from ..core import versions

    versions.set_current(spec)
