"""What `xmodal eval` (and `xmodal train` / `demo`) print and draw: metric tables and a PNG.

The plot is drawn with Pillow (already a dependency) rather than matplotlib: two panels,
recall/precision@K curves and per-type VQA accuracy, need no more than lines and boxes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

QUESTION_TYPES = ("colour", "shape", "size", "position", "count", "presence", "all")
HEADLINE = (
    "t2i_p@1",
    "t2i_rerank_p@1",
    "t2i_p@5",
    "i2t_r@1",
    "i2t_r@5",
    "caption_exact",
    "caption_f1",
    "vqa_generated_all",
    "vqa_ranked_all",
)
LABELS = {
    "t2i_p": "text→image precision (attribute queries)",
    "t2i_rerank_p": "text→image precision, decoder re-ranked",
    "t2i_caption_r": "text→image recall (full caption as query)",
    "i2t_r": "image→text recall",
    "t2i_r": "text→image recall",
    "caption_exact": "caption exact match",
    "caption_f1": "caption token F1",
}
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)


def world_table(metrics: Mapping[str, float]) -> str:
    """Retrieval and captioning rows, then one row per VQA question type."""
    lines = []
    retrieval = _at_k(metrics)
    if retrieval:
        ks = sorted({k for series in retrieval.values() for k in series})
        lines.append(_row(["retrieval (held-out world)", *(f"@{k}" for k in ks)], [42] + [7] * len(ks)))
        for name, series in retrieval.items():
            lines.append(_row([LABELS.get(name, name), *(_num(series.get(k)) for k in ks)], [42] + [7] * len(ks)))
    for key in ("caption_exact", "caption_f1"):
        if key in metrics:
            lines.append(_row([LABELS[key], _num(metrics[key])], [42, 7]))
    vqa = _vqa(metrics)
    if vqa:
        methods = sorted({m for per_type in vqa.values() for m in per_type})
        lines.append(_row(["VQA accuracy", *methods], [42] + [11] * len(methods)))
        for kind in [t for t in QUESTION_TYPES if t in vqa]:
            lines.append(_row([f"  {kind}", *(_num(vqa[kind].get(m)) for m in methods)], [42] + [11] * len(methods)))
    return "\n".join(lines)


def comparison_table(in_process: Mapping[str, float], served: Mapping[str, float]) -> str:
    """Each caption/VQA metric measured in process and through the endpoints, and their difference."""
    keys = [k for k in served if k in in_process]
    lines = [_row(["metric", "in process", "endpoints", "difference"], [28, 11, 11, 11])]
    lines += [
        _row([k, _num(in_process[k]), _num(served[k]), f"{served[k] - in_process[k]:+.3f}"], [28, 11, 11, 11])
        for k in keys
    ]
    return "\n".join(lines)


def index_table(name: str, metrics: Mapping[str, float]) -> str:
    series = _at_k(metrics)
    ks = sorted({k for s in series.values() for k in s})
    lines = [_row([f"index {name}", *(f"R@{k}" for k in ks)], [42] + [7] * len(ks))]
    lines += [_row([LABELS.get(n, n), *(_num(s.get(k)) for k in ks)], [42] + [7] * len(ks)) for n, s in series.items()]
    lines.append(f"({int(metrics.get('images', 0))} images, {int(metrics.get('texts', 0))} captions)")
    return "\n".join(lines)


def headline(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in HEADLINE if k in metrics)


def draw_plot(path: Path, world: Mapping[str, float] | None, indexes: Mapping[str, Mapping[str, float]]) -> Path:
    """A PNG: @K curves (world and each index) on the left, per-type VQA accuracy on the right."""
    curves: dict[str, dict[int, float]] = {}
    for name, series in _at_k(world or {}).items():
        curves[f"world: {LABELS.get(name, name)}"] = series
    for index_name, metrics in indexes.items():
        for name, series in _at_k(metrics).items():
            curves[f"{index_name}: {LABELS.get(name, name)}"] = series
    legend_rows = max(5, len(curves))
    width, margin = 1100, 60
    height = 440 + 16 * legend_rows
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    bottom = height - 40 - 16 * legend_rows  # the legend goes below the axes
    left = (margin, 40, width // 2 - 20, bottom)
    right = (width // 2 + margin, 40, width - 30, bottom)
    _curves_panel(draw, font, left, curves)
    _bars_panel(draw, font, right, _vqa(world or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _curves_panel(draw, font, box, curves: dict[str, dict[int, float]]) -> None:
    x0, y0, x1, y1 = box
    _axes(draw, font, box, "retrieval @K")
    ks = sorted({k for s in curves.values() for k in s}) or [1]

    def x_of(k: int) -> float:
        return x0 + (ks.index(k) + 0.5) * (x1 - x0) / len(ks)

    for k in ks:
        draw.text((x_of(k) - 8, y1 + 6), f"K={k}", fill="black", font=font)
    for n, (name, series) in enumerate(curves.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = [(x_of(k), _y_of(v, y0, y1)) for k, v in sorted(series.items())]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        # Pillow's default font has no arrows.
        draw.text((x0, y1 + 28 + 16 * n), name.replace("→", "->"), fill=colour, font=font)


def _bars_panel(draw, font, box, vqa: dict[str, dict[str, float]]) -> None:
    x0, y0, x1, y1 = box
    _axes(draw, font, box, "VQA accuracy by question type")
    kinds = [t for t in QUESTION_TYPES if t in vqa]
    if not kinds:
        draw.text(
            (x0 + 20, (y0 + y1) // 2), "no VQA results (not a CoCa model, or not evaluated)", fill="grey", font=font
        )
        return
    methods = sorted({m for per_type in vqa.values() for m in per_type})
    slot = (x1 - x0) / len(kinds)
    bar = slot * 0.8 / len(methods)
    for i, kind in enumerate(kinds):
        draw.text((x0 + i * slot + 4, y1 + 6), kind, fill="black", font=font)
        for j, method in enumerate(methods):
            value = vqa[kind].get(method)
            if value is None:
                continue
            left = x0 + i * slot + slot * 0.1 + j * bar
            draw.rectangle((left, _y_of(value, y0, y1), left + bar - 2, y1), fill=PALETTE[j % len(PALETTE)])
    for j, method in enumerate(methods):
        draw.text((x1 - 110, y0 + 6 + 16 * j), method, fill=PALETTE[j % len(PALETTE)], font=font)


def _axes(draw, font, box, title: str) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0, y0 - 28), title, fill="black", font=_font(16))
    for tick in range(6):
        value = tick / 5
        y = _y_of(value, y0, y1)
        draw.line((x0, y, x1, y), fill=(225, 225, 225))
        draw.text((x0 - 34, y - 7), f"{value:.1f}", fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline="black")


def _y_of(value: float, y0: float, y1: float) -> float:
    return y1 - max(0.0, min(1.0, value)) * (y1 - y0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _at_k(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"(.+)@(\d+)", key)
        if match:
            series.setdefault(match[1], {})[int(match[2])] = value
    return series


def _vqa(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    per_type: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"vqa_([a-z]+)_([a-z]+)", key)
        if match:
            per_type.setdefault(match[2], {})[match[1]] = value
    return per_type


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _row(cells: list[str], widths: list[int]) -> str:
    return "".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
