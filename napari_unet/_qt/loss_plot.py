"""A small live plot of the training loss and the validation metric, drawn with QPainter.

Chosen over matplotlib (not a napari dependency, and slow to redraw live) and pyqtgraph (another
dependency): two series and two axes take a hundred lines, repaint in well under a millisecond and
follow napari's theme colours.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(255, 160, 60)
RAW_COLOR = QColor(255, 160, 60, 70)
METRIC_COLOR = QColor(90, 200, 255)


class LossPlot(QWidget):
    """Loss (left axis, log scale) and validation metric (right axis, 0..1) against the training step.

    `metric_name` says what the metric was measured on ("held-out", or "on training pixels" when the
    engine had too few trusted pixels to hold some out). Nothing is drawn for the loss before a step.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.loss: list[tuple[int, float]] = []
        self.smooth: list[tuple[int, float]] = []
        self.metric: list[tuple[int, float]] = []
        self.metric_name = "held-out"

    def clear(self) -> None:
        self.loss.clear()
        self.smooth.clear()
        self.metric.clear()
        self.metric_name = "held-out"
        self.update()

    def set_metric_name(self, name: str) -> None:
        """Say what the validation metric is measured on (legend text)."""
        self.metric_name = name
        self.update()

    def _step_range(self) -> tuple[int, int]:
        steps = [s for s, _ in self.loss + self.metric] or [0, 1]
        return min(steps), max(max(steps), min(steps) + 1)

    def _loss_range(self) -> tuple[float, float]:
        """log10 of the loss axis' bottom and top."""
        values = [v for _, v in self.loss + self.smooth] or [0.1, 1.0]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        if hi - lo < 0.3:
            mid = (hi + lo) / 2
            lo, hi = mid - 0.15, mid + 0.15
        return lo, hi

    def texts(self) -> dict[str, str]:
        """The words and figures the plot shows: legends, loss-axis ends, step range."""
        lo, hi = self._loss_range()
        has_loss = bool(self.loss or self.smooth)
        latest_loss = (self.smooth or self.loss)[-1][1] if has_loss else None
        return {
            "loss": "● training loss" + (f" {latest_loss:.3f}" if latest_loss is not None else ""),
            "metric": f"● {self.metric_name}" + (f" {self.metric[-1][1]:.3f}" if self.metric else ""),
            "loss_top": f"{10**hi:.3g}" if has_loss else "",
            "loss_bottom": f"{10**lo:.3g}" if has_loss else "",
            "steps": "step {}–{}".format(*self._step_range()) if self.loss else "step",
        }

    def add(self, step: int, loss: float | None, smoothed: float | None = None, metric: float | None = None) -> None:
        """Append one event's values (NaN / None are skipped) and schedule a repaint."""
        if loss is not None and math.isfinite(loss) and loss > 0:
            self.loss.append((step, loss))
        if smoothed is not None and math.isfinite(smoothed) and smoothed > 0:
            self.smooth.append((step, smoothed))
        if metric is not None and math.isfinite(metric):
            self.metric.append((step, metric))
        self.update()

    # --- drawing -------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        grid = QColor(fg)
        grid.setAlpha(50)
        fm = p.fontMetrics()
        left, right, top, bottom = fm.horizontalAdvance("0.000") + 8, fm.horizontalAdvance("1.00") + 8, 18, 18
        area = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QPen(grid, 1))
        p.drawRect(area)
        x0, x1 = self._step_range()
        lo, hi = self._loss_range()
        text = self.texts()

        def px(step: float) -> float:
            return area.left() + (step - x0) / (x1 - x0) * area.width()

        def py_loss(v: float) -> float:
            return area.bottom() - (math.log10(v) - lo) / (hi - lo) * area.height()

        def py_metric(v: float) -> float:
            return area.bottom() - max(0.0, min(1.0, v)) * area.height()

        for frac in (0.25, 0.5, 0.75):
            y = area.bottom() - frac * area.height()
            p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        p.setPen(QPen(RAW_COLOR, 1))
        for s, v in self.loss:
            p.drawPoint(QPointF(px(s), py_loss(v)))
        self._line(p, [(px(s), py_loss(v)) for s, v in self.smooth or self.loss], LOSS_COLOR)
        self._line(p, [(px(s), py_metric(v)) for s, v in self.metric], METRIC_COLOR, markers=True)

        p.setPen(fg)
        p.drawText(QRectF(0, area.top() - 2, left - 4, 14), Qt.AlignRight, text["loss_top"])
        p.drawText(QRectF(0, area.bottom() - 12, left - 4, 14), Qt.AlignRight, text["loss_bottom"])
        p.drawText(QRectF(area.right() + 4, area.top() - 2, right, 14), Qt.AlignLeft, "1.0")
        p.drawText(QRectF(area.right() + 4, area.bottom() - 12, right, 14), Qt.AlignLeft, "0.0")
        p.drawText(
            QRectF(area.left(), area.bottom() + 2, area.width(), 14),
            Qt.AlignCenter,
            text["steps"],
        )
        p.setPen(LOSS_COLOR)
        p.drawText(QRectF(area.left() + 4, 0, area.width() / 2, 16), Qt.AlignLeft, text["loss"])
        p.setPen(METRIC_COLOR)
        p.drawText(QRectF(area.center().x(), 0, area.width() / 2 - 4, 16), Qt.AlignRight, text["metric"])
        p.end()

    @staticmethod
    def _line(p: QPainter, pts: list[tuple[float, float]], color: QColor, markers: bool = False) -> None:
        if not pts:
            return
        p.setPen(QPen(color, 2))
        path = QPainterPath(QPointF(*pts[0]))
        for x, y in pts[1:]:
            path.lineTo(QPointF(x, y))
        p.drawPath(path)
        if markers:
            p.setBrush(color)
            for x, y in pts:
                p.drawEllipse(QPointF(x, y), 3, 3)
            p.setBrush(Qt.NoBrush)
