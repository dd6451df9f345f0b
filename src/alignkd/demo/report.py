"""The demo's results table: accuracy per question kind, with mean and spread over seeds."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OVERALL = "overall"


@dataclass
class DemoResults:
    """Accuracies of every run of the demo.

    Fields:
        settings: the demo's settings.
        parameters: parameter counts of the teacher and the student ({"total": .., ...}).
        accuracy: run name ("teacher", "sft", "vanilla-kd", "paper") -> one entry per seed, each
            {"overall": percent, "per_kind": {kind: percent}, "questions": count}.
        seconds: wall time of the whole demo.
    """

    settings: dict[str, Any]
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    accuracy: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_seeds(self) -> int:
        return max((len(entries) for name, entries in self.accuracy.items() if name != "teacher"), default=0)

    def kinds(self) -> list[str]:
        seen: list[str] = []
        for entries in self.accuracy.values():
            for entry in entries:
                for kind in entry["per_kind"]:
                    if kind not in seen:
                        seen.append(kind)
        return sorted(seen)

    def _values(self, name: str, column: str) -> list[float]:
        entries = self.accuracy[name]
        if column == OVERALL:
            return [float(entry[OVERALL]) for entry in entries]
        return [float(entry["per_kind"][column]) for entry in entries if column in entry["per_kind"]]

    def mean_per_kind(self, name: str) -> dict[str, float]:
        """Mean accuracy over seeds of run `name`, per kind and overall."""
        return {column: statistics.fmean(self._values(name, column)) for column in [OVERALL, *self.kinds()] if self._values(name, column)}

    def spread_per_kind(self, name: str) -> dict[str, float]:
        """Sample standard deviation over seeds (0 with one seed)."""
        spread = {}
        for column in [OVERALL, *self.kinds()]:
            values = self._values(name, column)
            if values:
                spread[column] = statistics.stdev(values) if len(values) > 1 else 0.0
        return spread

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "parameters": self.parameters,
            "seconds": round(self.seconds, 1),
            "runs": {
                name: {"per_seed": entries, "mean": self.mean_per_kind(name), "spread": self.spread_per_kind(name)}
                for name, entries in self.accuracy.items()
            },
        }


def format_table(results: DemoResults) -> str:
    """Format a Markdown table: one row per run, overall accuracy and one column per question kind."""
    columns = [OVERALL, *results.kinds()]
    lines = [
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in results.accuracy:
        means = results.mean_per_kind(name)
        spreads = results.spread_per_kind(name)
        cells = []
        for column in columns:
            if column not in means:
                cells.append("-")
            elif len(results.accuracy[name]) > 1:
                cells.append(f"{means[column]:.1f} ± {spreads[column]:.1f}")
            else:
                cells.append(f"{means[column]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = results.num_seeds
    lines.append("")
    lines.append(
        f"Test accuracy in percent; students: {seeds} seed{'s' if seeds != 1 else ''}"
        + (" (mean ± sample standard deviation)" if seeds > 1 else "")
        + f"; whole run {results.seconds / 60:.1f} min."
    )
    return "\n".join(lines)


def write_report_tables(results: DemoResults, report_dir: Path) -> None:
    """Write results.md and results.json to `report_dir`."""
    (report_dir / "results.md").write_text("# alignkd demo results\n\n" + format_table(results) + "\n", encoding="utf-8")
    (report_dir / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n", encoding="utf-8")
