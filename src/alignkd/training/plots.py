"""The loss-curve picture that every training stage writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from alignkd.demo.plots import plot_loss_curves

# Trainer's log entries that are not loss terms.
_NOT_LOSSES = {"loss", "grad_norm", "learning_rate", "learning_rate_projector", "epoch", "step", "tokens_per_second"}


def loss_points(history: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Turn Trainer's log history into (step, {term: value}) points, one per training log line."""
    points = []
    for entry in history:
        if "loss" not in entry or "step" not in entry:
            continue
        values = {"total": float(entry["loss"])}
        for key, value in entry.items():
            if key.startswith("loss_") and key not in _NOT_LOSSES:
                values[key.removeprefix("loss_")] = float(value)
        points.append((int(entry["step"]), values))
    return points


def plot_loss_history(history: Sequence[dict[str, Any]], output_path: str | Path, title: str = "Training loss") -> Path | None:
    """Draw every loss term of one run against the step; None when nothing was logged."""
    points = loss_points(history)
    if not points:
        return None
    return plot_loss_curves({"student": points}, output_path, title=title)
