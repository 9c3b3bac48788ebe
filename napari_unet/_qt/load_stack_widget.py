"""The Load stack widget: what a reader cannot guess - a folder as one stack, axis order, channel, pixel size."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.io import is_zarr, read_image
from ..core.stack_io import image_layers, read_folder_stack, restored_layers
from . import notify
from .controls import form, row

AXES_CHOICES = ("from file", "YX", "ZYX", "TYX", "CYX", "YXC", "ZCYX", "CZYX", "TZYX", "TCYX", "TZCYX")


class LoadStackWidget(QWidget):
    """Open a file or a folder of 2D images with explicit axes, channel and pixel size.

    Args:
        napari_viewer: The viewer (napari passes it when docking the widget).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer  # napari's public proxy when docked from the Plugins menu
        self.path = QLineEdit(placeholderText="a TIFF / OME-TIFF / zarr, or a folder of 2D images")
        file_btn = QPushButton("File...")
        folder_btn = QPushButton("Folder...")
        self.folder_axis = QComboBox()
        self.folder_axis.addItems(["Z", "T"])
        self.folder_axis.setToolTip("a folder of 2D images is stacked along this axis")
        self.axes = QComboBox(editable=True)
        self.axes.addItems(AXES_CHOICES)
        self.axes.setToolTip("axis order of the data, slowest first (T time, Z depth, C channel, Y, X)")
        self.channel = QComboBox()
        self.channel.addItem("all, as separate layers", None)
        for c in range(8):
            self.channel.addItem(f"channel {c} only", c)
        self.pixel = QDoubleSpinBox(minimum=0.0, maximum=1e4, decimals=4, singleStep=0.01, suffix=" µm")
        self.pixel.setSpecialValueText("from file")
        self.z_step = QDoubleSpinBox(minimum=0.0, maximum=1e4, decimals=4, singleStep=0.1, suffix=" µm")
        self.z_step.setSpecialValueText("from file / 1")
        self.load_btn = QPushButton("Load")
        self.status = QLabel(wordWrap=True)

        top = QWidget()
        f = form(top)
        f.addRow("path", self.path)
        f.addRow("", row(QWidget(), file_btn, folder_btn))
        f.addRow("folder axis", self.folder_axis)
        f.addRow("axes", self.axes)
        f.addRow("channel", self.channel)
        f.addRow("pixel size (YX)", self.pixel)
        f.addRow("Z step", self.z_step)
        lay = QVBoxLayout(self)
        lay.addWidget(top)
        lay.addWidget(self.load_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)
        file_btn.clicked.connect(self._pick_file)
        folder_btn.clicked.connect(self._pick_folder)
        self.load_btn.clicked.connect(lambda: self.load())

    def _pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", "Images (*.tif *.tiff *.npy);;All files (*)")
        if path:
            self.path.setText(path)

    def _pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of 2D images (or a zarr)")
        if path:
            self.path.setText(path)

    def load(self) -> list:
        """Read the path with the chosen options and add its layers; returns the layers added."""
        text = self.path.text().strip()
        if not text:
            self.status.setText(notify.error("Choose a file or a folder first."))
            return []
        path = Path(text).expanduser()
        axes = self.axes.currentText().strip().upper()
        axes = None if axes in ("", "FROM FILE") else axes
        scale: dict[str, float] = {}
        if self.pixel.value() > 0:
            scale["Y"] = scale["X"] = float(self.pixel.value())
        if self.z_step.value() > 0:
            scale["Z"] = float(self.z_step.value())
        try:
            img = (
                read_folder_stack(path, self.folder_axis.currentText())
                if path.is_dir() and not is_zarr(path)
                else read_image(path)
            )
            if not scale:
                from ..core.stack_io import ome_extra_scale

                scale = ome_extra_scale(path)
            name = path.name.split(".")[0] or path.name
            layers = image_layers(
                img, name, axes=axes, channel=self.channel.currentData(), scale=scale, source=str(path.absolute())
            )
        except (ValueError, OSError) as exc:
            self.status.setText(notify.error(exc, f"Cannot load '{path.name}'"))
            return []
        added = []
        for data, kwargs, _ in layers:
            added.append(self.viewer.add_image(data, **kwargs))
        for data, kwargs, _ in [r for layer in layers for r in restored_layers(layer)]:
            if kwargs["name"] not in self.viewer.layers:
                added.append(self.viewer.add_labels(data, **kwargs))
        shape = "x".join(map(str, getattr(img.data, "shape", ())))
        self.status.setText(f"loaded '{name}' ({shape}) as {len(layers)} layer(s)")
        return added
