"""The model choices the widgets offer: the bundled model and the saved versions (newest first)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelChoice:
    """One entry of a model combo box: what `load_model` takes (`spec`) and what the user reads."""

    spec: str
    label: str
    tooltip: str = ""


def _metric(version) -> str:
    m = version.metrics or {}
    before, after = m.get("val_before"), m.get("val_after")
    if before is None or after is None:
        return ""
    return f"held-out {before:.3f} -> {after:.3f}"


def model_choices() -> list[ModelChoice]:
    """Bundled first, then saved versions newest first; the current one is marked."""
    from ..core import versions

    out = [ModelChoice("bundled", "bundled", "the model shipped with napari-unet")]
    try:
        listed = versions.list_versions()
    except OSError:
        listed = []
    for v in reversed(listed):
        label = f"{v.name}{'  (current)' if v.current else ''}"
        tip = "; ".join(t for t in (f"from {v.parent}" if v.parent else "", _metric(v), v.created) if t)
        out.append(ModelChoice(v.name, label, tip))
    return out


def current_spec() -> str:
    """What "current" points at: a version name, or "bundled"."""
    from ..core import versions

    return versions.current_name() or "bundled"


def set_current(spec: str) -> None:
    """Make `spec` (a version name or "bundled") the current model, for the widgets and the CLI."""
    from ..core import versions

    versions.set_current(spec)
