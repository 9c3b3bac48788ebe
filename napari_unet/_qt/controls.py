"""Small controls the widgets share: a layer picker that follows the selection, model and device pickers."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QSize, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .models import model_choices


def layer_key(layer) -> int:
    """A layer's identity, the same for the layer and for napari's public proxy of it.

    A plugin's viewer is a proxy: indexing its layer list or reading the active layer gives a new
    proxy each time, so `id()` differs, while the proxy hashes as the layer (whose hash is its identity).
    """
    return hash(layer)


class LayerCombo(QComboBox):
    """Layers of one type, by name; follows the viewer's active layer when it has that type.

    Args:
        viewer: The napari viewer.
        layer_type: A napari layer class, e.g. `napari.layers.Image`.
        accept: Extra filter on the layers listed.
        follow: Select the active layer whenever it is of this type.
    """

    layer_changed = Signal(object)

    def __init__(
        self, viewer, layer_type: type, accept: Callable[[object], bool] | None = None, follow: bool = True
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer_type = layer_type
        self.accept = accept or (lambda layer: True)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setMinimumContentsLength(12)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        if follow:
            viewer.layers.selection.events.active.connect(self._on_active)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()
        active = viewer.layers.selection.active
        if follow and isinstance(active, layer_type):
            self.set_layer(active)

    def _layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, self.layer_type) and self.accept(lay)]

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def _on_active(self, event) -> None:
        if isinstance(event.value, self.layer_type) and self.accept(event.value):
            self.set_layer(event.value)

    def refresh(self, event=None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentData()
        layers = self._layers()
        self.blockSignals(True)
        self.clear()
        for layer in layers:
            self.addItem(layer.name, layer_key(layer))
        idx = self.findData(current)
        self.setCurrentIndex(idx if idx >= 0 else (0 if layers else -1))
        self.blockSignals(False)
        if self.currentData() != current:
            self.layer_changed.emit(self.layer())

    def layer(self):
        """The chosen layer, or None."""
        key = self.currentData()
        for layer in self.viewer.layers:
            if layer_key(layer) == key:
                return layer
        return None

    def set_layer(self, layer) -> None:
        """Choose `layer` (a layer of the viewer, or napari's proxy of one)."""
        if self.findData(layer_key(layer)) < 0:
            self.refresh()
        idx = self.findData(layer_key(layer))
        if idx >= 0:
            self.setCurrentIndex(idx)


class ModelCombo(QComboBox):
    """The bundled model and the saved versions; `spec()` is what `load_model` takes."""

    def __init__(self) -> None:
        super().__init__()
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setMinimumContentsLength(12)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Re-list; select `select` (a spec) if given, else keep the current choice, else "current"."""
        keep = select or self.spec()
        if not keep:
            from .models import current_spec

            keep = current_spec()
        self.blockSignals(True)
        self.clear()
        for choice in model_choices():
            self.addItem(choice.label, choice.spec)
            self.setItemData(self.count() - 1, choice.tooltip, 3)  # Qt.ToolTipRole
        idx = self.findData(keep)
        self.setCurrentIndex(max(idx, 0))
        self.blockSignals(False)
        if self.spec() != keep or select:
            self.currentIndexChanged.emit(self.currentIndex())

    def spec(self) -> str | None:
        return self.currentData()


def available_devices() -> list[tuple[str, bool]]:
    """(device, available) for auto, cpu, cuda, mps."""
    import torch

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return [("auto", True), ("cpu", True), ("cuda", torch.cuda.is_available()), ("mps", mps)]


def describe_device(spec: str) -> str:
    """What a device choice resolves to on this machine, e.g. 'cpu (2 threads, fp32)'."""
    from ..core.device import describe, select_device

    try:
        return describe(select_device(spec))
    except ValueError as exc:
        return str(exc)


class DeviceRow(QWidget):
    """A device picker and, next to it, the device that will run (or last ran) the work."""

    def __init__(self) -> None:
        super().__init__()
        self.combo = QComboBox()
        for name, ok in available_devices():
            self.combo.addItem(name, name)
            if not ok:
                self.combo.model().item(self.combo.count() - 1).setEnabled(False)
        self.label = QLabel()
        self.label.setWordWrap(True)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        lay.addWidget(self.label, 1)
        self.combo.currentIndexChanged.connect(lambda _: self.show_planned())
        self.show_planned()

    def device(self) -> str:
        return self.combo.currentData()

    def show_planned(self) -> None:
        self.label.setText(f"→ {describe_device(self.device())}")

    def show_used(self, description: str) -> None:
        """Show the device that really ran (after any fallback)."""
        self.label.setText(f"ran on {description}")


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side; the first one stretches."""
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, x in enumerate(widgets):
        lay.addWidget(x, 1 if i == 0 else 0)
    return w


MIN_ROWS = 9  # text rows a scrolled widget shows at least (about five rows of controls)


class VerticalScroll(QScrollArea):
    """Scrolls its content vertically only: as wide as the content needs, only a few rows tall.

    Args:
        content: The widget to show, laid out already (Qt shows nothing added to it later).
        grow: Let the area grow taller than the content needs (for content with a stretchable part,
            like a plot); otherwise the spare height goes to the neighbouring docks.
    """

    def __init__(self, content: QWidget, grow: bool = False) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setWidget(content)
        self.grow = grow
        content.installEventFilter(self)
        self._fit()

    def _fit(self) -> None:
        if self.grow:
            return
        content = self.widget()
        height = content.sizeHint().height()
        width = self.viewport().width()
        if content.hasHeightForWidth() and width > 0:  # wrapped status lines need more rows when narrow
            height = max(height, content.heightForWidth(width))
        self.setMaximumHeight(height + 2 * self.frameWidth())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if obj is self.widget() and event.type() == QEvent.LayoutRequest:
            self._fit()  # e.g. a status line that wrapped onto more rows
        return super().eventFilter(obj, event)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        # A few rows at least: napari sizes stacked docks 1:5:9 from the top, which would leave the
        # first one a sliver; three docks at this minimum still fit a 768 px screen.
        content = self.widget()
        width = content.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, min(content.sizeHint().height(), MIN_ROWS * self.fontMetrics().height()))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        # The content's own size, but at most a third of the screen: a newly docked widget keeps the
        # height it asks for and the docks above it give way, so three docked widgets share the height.
        hint = self.widget().sizeHint()
        screen = self.screen()
        height = min(hint.height(), screen.availableGeometry().height() // 3) if screen else hint.height()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(), height)


def scroll_in(owner: QWidget, content: QWidget, grow: bool = False) -> VerticalScroll:
    """Show `content` (laid out already) in `owner` inside a vertical scroll area.

    napari stacks docked widgets, so the main window's minimum height is the sum of theirs; in a
    scroll area a widget asks for a few rows only, and Segment, Corrections and Retrain docked
    together fit a 1366x768 screen. The content keeps its natural size and scrolls when squeezed.
    """
    area = VerticalScroll(content, grow)
    lay = QVBoxLayout(owner)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(area, 1)  # up to its maximum height (all of the content)...
    if not grow:
        lay.addStretch(0)  # ...and what a taller dock has beyond that goes below it, so the content stays on top
    return area


def is_source_image(layer) -> bool:
    """An image the user opened (not one of the plugin's probability / preview / overlay layers)."""
    return layer.metadata.get("napari_unet", {}).get("role") is None


def form(parent: QWidget) -> QFormLayout:
    """A compact form layout for a widget section."""
    lay = QFormLayout(parent)
    lay.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    lay.setLabelAlignment(lay.labelAlignment())
    return lay
