"""Figures of the demo report: accuracy per question kind, loss curves and attention heat maps.

Each function draws on its own matplotlib `Figure` with the Agg canvas, so no display and no
pyplot state are involved, writes one PNG (creating its folder) and returns the PNG's path.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DEFAULT_DPI = 150

# Width in inches given to each bar group, loss panel and attention panel.
_GROUP_WIDTH_INCHES = 1.4
_PANEL_INCHES = 3.2

# Share of a bar group's slot that its bars fill. The rest separates neighbouring groups.
_GROUP_FILL = 0.8

# Maximum number of columns of loss panels before they wrap to a new row.
_MAX_LOSS_COLUMNS = 3

# Maximum opacity of the image's white ink drawn over a heat map. Below 1, the heat map's
# colour still shows through the brightest strokes.
_INK_MAX_ALPHA = 0.8


def plot_accuracy(
    accuracy: Mapping[str, Mapping[str, float]],
    output_path: str | Path,
    *,
    spread: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "Accuracy per question kind",
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Draw a grouped bar chart with one group per question kind and one bar per run.

    `accuracy` maps run name -> kind -> accuracy in [0, 1]. Kinds appear in the order first
    seen, and a kind missing from a run leaves a gap. `spread` (same keys, for example the
    standard deviation over seeds) draws error bars of that half-length.
    """
    if not accuracy:
        raise ValueError("plot_accuracy needs at least one run in `accuracy`")
    for run, by_kind in accuracy.items():
        for kind, value in by_kind.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"accuracy of run {run!r} on kind {kind!r} is {value!r}; expected a fraction from 0 to 1, "
                    "not a percentage"
                )

    kinds = _ordered_union(by_kind.keys() for by_kind in accuracy.values())
    runs = list(accuracy)
    bar_width = _GROUP_FILL / len(runs)
    positions = np.arange(len(kinds))

    figure = Figure(figsize=(max(4.0, _GROUP_WIDTH_INCHES * len(kinds) + 1.5), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    for index, run in enumerate(runs):
        values = np.array([accuracy[run].get(kind, np.nan) for kind in kinds], dtype=float)
        errors = None
        if spread is not None and run in spread:
            errors = np.array([spread[run].get(kind, 0.0) for kind in kinds], dtype=float)
        offsets = positions - _GROUP_FILL / 2 + (index + 0.5) * bar_width
        bars = axes.bar(offsets, values, bar_width, yerr=errors, capsize=3, label=run)
        axes.bar_label(bars, labels=[_format_fraction(value) for value in values], fontsize="x-small", padding=2)

    axes.set_xticks(positions, kinds)
    axes.set_ylim(0.0, 1.1)
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=min(len(runs), 4))
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, output_path, dpi)


def plot_loss_curves(
    history: Mapping[str, Sequence[tuple[int, Mapping[str, float]]]],
    output_path: str | Path,
    *,
    terms: Sequence[str] | None = None,
    smoothing_window: int = 1,
    log_scale: bool = False,
    title: str = "Training loss",
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Draw one panel per loss term with one line per run.

    `history` maps run name -> list of (step, {term: value}), and a run without a term has no
    line in that panel. `terms` picks and orders the panels (default: every term, in the
    order first seen). With `smoothing_window` > 1 each line is the trailing mean over that
    many logged points, drawn over the raw values in a faint line. `log_scale` uses a log
    y-axis on panels whose values are all positive.
    """
    if not history:
        raise ValueError("plot_loss_curves needs at least one run in `history`")
    if smoothing_window < 1:
        raise ValueError(f"smoothing_window must be 1 or more, got {smoothing_window}")

    if terms is None:
        terms = _ordered_union(values.keys() for points in history.values() for _, values in points)
    if not terms:
        raise ValueError("plot_loss_curves found no loss terms in `history`")

    columns = min(len(terms), _MAX_LOSS_COLUMNS)
    rows = math.ceil(len(terms) / columns)
    figure = Figure(figsize=(_PANEL_INCHES * columns + 0.5, _PANEL_INCHES * 0.8 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    colors = _run_colors(len(history))

    for panel, term in enumerate(terms):
        axes = figure.add_subplot(rows, columns, panel + 1)
        panel_values = []
        for color, (run, points) in zip(colors, history.items()):
            steps = np.array([step for step, values in points if term in values], dtype=float)
            values = np.array([values[term] for _, values in points if term in values], dtype=float)
            if len(steps) == 0:
                continue
            panel_values.append(values)

            if smoothing_window > 1:
                axes.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                values = _trailing_mean(values, smoothing_window)
            axes.plot(steps, values, color=color, label=run, linewidth=1.4)

        finite = np.concatenate(panel_values) if panel_values else np.array([])
        finite = finite[np.isfinite(finite)]
        if log_scale and len(finite) and finite.min() > 0:
            axes.set_yscale("log")
        axes.set_title(term, fontsize="medium")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if panel == 0:
            axes.legend(fontsize="small")
    return _save(figure, output_path, dpi)


def plot_attention_maps(
    image: Any,
    attentions: Mapping[str, Any],
    grids: tuple[int, int] | Mapping[str, tuple[int, int]],
    output_path: str | Path,
    *,
    per_head: bool = False,
    title: str = "First-layer attention from text to vision tokens",
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Draw each model's text-to-vision attention as a heat map over the image.

    `image` is a [height, width] or [height, width, channels] array (or a PIL image).
    `attentions` maps model name -> attention probabilities [heads, text, vision] (NumPy or a
    torch tensor), where the vision axis runs over the vision-token grid in row-major order.
    `grids` is the (rows, cols) of that grid, the same for every model or per model name;
    rows x cols must equal the vision count. Each panel shows the mean over heads and text
    queries, stretched over the whole image, with the share of attention that falls on the
    vision tokens in its title. With `per_head`, a row of panels per head follows.
    """
    if not attentions:
        raise ValueError("plot_attention_maps needs at least one model in `attentions`")
    picture = np.asarray(image)
    if picture.ndim not in (2, 3):
        raise ValueError(f"image must be [height, width] or [height, width, channels], got shape {picture.shape}")

    maps = {name: _attention_grid(name, weights, _grid_of(grids, name)) for name, weights in attentions.items()}
    max_heads = max(per_head_maps.shape[0] for per_head_maps, _ in maps.values())
    panel_rows = 1 + (max_heads if per_head else 0)
    panel_cols = 1 + len(maps)

    figure = Figure(figsize=(_PANEL_INCHES * panel_cols, _PANEL_INCHES * panel_rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    axes_grid = figure.subplots(panel_rows, panel_cols, squeeze=False)

    _show_image(axes_grid[0, 0], picture)
    axes_grid[0, 0].set_title("image", fontsize="medium")
    for row in range(1, panel_rows):
        axes_grid[row, 0].axis("off")

    for column, (name, (per_head_maps, vision_share)) in enumerate(maps.items(), start=1):
        axes = axes_grid[0, column]
        _show_heat_map(figure, axes, picture, per_head_maps.mean(axis=0))
        axes.set_title(f"{name}\n{vision_share:.0%} of attention on vision tokens", fontsize="medium")

        if not per_head:
            continue
        for head in range(max_heads):
            axes = axes_grid[head + 1, column]
            if head >= per_head_maps.shape[0]:
                axes.axis("off")
                continue
            _show_heat_map(figure, axes, picture, per_head_maps[head])
            axes.set_title(f"{name}, head {head}", fontsize="small")
    return _save(figure, output_path, dpi)


def _attention_grid(name: str, weights: Any, grid: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Check one model's [heads, text, vision] attention and return its per-head maps
    [heads, rows, cols] (mean over text queries) and the mean attention mass on vision tokens."""
    array = _to_numpy(weights)
    if array.ndim != 3:
        raise ValueError(
            f"attention of model {name!r} must be [heads, text, vision], got shape {tuple(array.shape)}; "
            "select one sample and the text-to-vision block first"
        )

    heads, text, vision = array.shape
    rows, cols = grid
    if rows * cols != vision:
        raise ValueError(
            f"attention of model {name!r} has {vision} vision tokens, which do not fit the {rows}x{cols} grid "
            f"({rows * cols} tokens); pass the model's vision-token grid, whose rows x cols equals {vision}"
        )
    if heads == 0 or text == 0:
        raise ValueError(
            f"attention of model {name!r} has {heads} heads and {text} text queries; a heat map needs at least one of each"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"attention of model {name!r} contains NaN or infinite values")

    per_head_maps = array.mean(axis=1).reshape(heads, rows, cols)
    vision_share = float(array.sum(axis=2).mean())
    return per_head_maps, vision_share


def _grid_of(grids: tuple[int, int] | Mapping[str, tuple[int, int]], name: str) -> tuple[int, int]:
    if isinstance(grids, Mapping):
        if name not in grids:
            raise ValueError(f"no vision-token grid given for model {name!r}; `grids` has {sorted(grids)}")
        grid = grids[name]
    else:
        grid = grids
    rows, cols = (int(size) for size in grid)
    return rows, cols


def _to_numpy(values: Any) -> np.ndarray:
    # NumPy cannot take a torch tensor that requires grad or lives on an accelerator.
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _show_image(axes: Any, picture: np.ndarray) -> None:
    height, width = picture.shape[:2]
    color_map = "gray" if picture.ndim == 2 else None
    axes.imshow(picture, cmap=color_map, extent=(0, width, height, 0), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])


def _show_heat_map(figure: Figure, axes: Any, picture: np.ndarray, heat: np.ndarray) -> None:
    """Draw `heat` [rows, cols] over the whole panel, one block per vision token, with the
    image's bright pixels as white ink on top.

    The heat map is opaque so that its colours match the colour bar. The ink suits images with
    a dark background, such as the demo's digit scenes.
    """
    height, width = picture.shape[:2]
    extent = (0, width, height, 0)
    heat_image = axes.imshow(
        heat,
        cmap="viridis",
        extent=extent,
        interpolation="nearest",
        vmin=0.0,
        vmax=max(float(heat.max()), np.finfo(float).tiny),
    )

    ink = np.ones((height, width, 4))
    ink[..., 3] = _brightness(picture) * _INK_MAX_ALPHA
    axes.imshow(ink, extent=extent, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(heat_image, ax=axes, shrink=0.8)


def _brightness(picture: np.ndarray) -> np.ndarray:
    """Return the [height, width] brightness of an image in [0, 1], from uint8 or from floats in [0, 1]."""
    grey = picture.mean(axis=2) if picture.ndim == 3 else picture
    if np.issubdtype(picture.dtype, np.integer):
        grey = grey / np.iinfo(picture.dtype).max
    return np.clip(np.asarray(grey, dtype=np.float64), 0.0, 1.0)


def _run_colors(count: int) -> list[Any]:
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    return [colors[index % len(colors)] for index in range(count)]


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Return the mean of each value and up to `window - 1` values before it, skipping NaN and infinities."""
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel)[: len(values)]
    counts = np.convolve(finite.astype(float), kernel)[: len(values)]
    means = np.full(len(values), np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


def _ordered_union(groups: Any) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        seen.update(dict.fromkeys(group))
    return list(seen)


def _format_fraction(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def _save(figure: Figure, output_path: str | Path, dpi: int) -> Path:
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    logger.info("Wrote %s", path)
    return path
