"""The result of scoring an answers file: metrics, tables, counts and where they came from.

Every accuracy-like metric (accuracy, precision, recall, F1, yes-ratio) is a percentage in
[0, 100]. MME scores are sums of two percentages per subtask. A metric that cannot be
computed (for example precision when a split has no "yes" prediction) is None in JSON and
"-" in the table, and a note says why.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The value that `alignkd.eval.answers` reports for a setting the answers file lacks.
NOT_RECORDED = "not recorded in the answers file"

# Bytes read at a time when hashing files, so that large annotation files are not held in memory.
_HASH_CHUNK_BYTES = 1 << 20


def sha256_of_file(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(paths: list[Path]) -> list[dict[str, str]]:
    """Return the path and SHA-256 of each file, in the given order."""
    return [{"path": str(path), "sha256": sha256_of_file(path)} for path in paths]


def describe_folder(root: Path, files: list[Path]) -> dict[str, str | int]:
    """Return a folder's path, file count and one SHA-256 over its files' relative paths and digests.

    The digest changes when any file is added, removed, renamed or edited.
    """
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(root).as_posix()}\t{sha256_of_file(path)}\n".encode())
    return {"path": str(root), "sha256": digest.hexdigest(), "files": len(files)}


def percent(numerator: float, denominator: float) -> float | None:
    """Return 100 * numerator / denominator, or None when the denominator is 0."""
    if denominator == 0:
        return None
    return 100.0 * numerator / denominator


@dataclass
class Table:
    """A block of the printed report: a title, column names and rows of cells."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass
class ScoreReport:
    """Scores of one answers file against one benchmark's annotations.

    Fields:
        benchmark: registry name of the benchmark.
        metrics: headline metrics by name, for example {"accuracy": 61.2}. Values are
            percentages or MME points, or None when not computable.
        counts: counts by name, always including "questions" (answers scored) and
            "unparseable" (answers from which no label could be read; they count as wrong).
        tables: the detailed tables that `format_text` prints.
        notes: sentences about metrics that were not computed or need care.
        provenance: answers and annotation files with their SHA-256, and the prompt variant,
            template and decoding settings read from the answers file.
        details: per-split or per-category metrics for JSON output.
    """

    benchmark: str
    metrics: dict[str, float | None]
    counts: dict[str, int]
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """Return the report as JSON-safe data (tables are left out; `details` has their numbers)."""
        data = asdict(self)
        data.pop("tables")
        return data

    def write_json(self, path: str | Path) -> None:
        """Write the report as indented JSON to `path`, creating parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")

    def format_text(self) -> str:
        """Return the human-readable report that `alignkd score` prints."""
        lines = [f"Benchmark: {self.benchmark}"]
        lines.extend(_format_provenance(self.provenance))

        lines.append("")
        lines.extend(_format_table(Table("Summary", ["metric", "value"], [[k, v] for k, v in self.metrics.items()])))
        for table in self.tables:
            lines.append("")
            lines.extend(_format_table(table))

        lines.append("")
        counts = ", ".join(f"{name} {value}" for name, value in self.counts.items())
        lines.append(f"Counts: {counts}")
        unparseable = self.counts.get("unparseable", 0)
        if unparseable:
            lines.append(f"{unparseable} answers could not be parsed and were scored as wrong.")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)


def format_cell(value: Any) -> str:
    """Format a table cell: floats with two decimals, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _format_table(table: Table) -> list[str]:
    cells = [[format_cell(value) for value in row] for row in table.rows]
    widths = [len(column) for column in table.columns]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def render(row: list[str]) -> str:
        # The first column contains names and is left-aligned, and numbers are right-aligned.
        parts = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    lines = [table.title, render(table.columns)]
    lines.extend(render(row) for row in cells)
    return lines


def _format_provenance(provenance: dict[str, Any]) -> list[str]:
    lines = []
    answers = provenance.get("answers_file")
    if answers:
        lines.append(f"Answers: {answers['path']} (sha256 {answers['sha256']})")
    for annotation in provenance.get("annotation_files", []):
        if "files" in annotation:
            files = annotation["files"]
            lines.append(f"Annotations: {annotation['path']} ({files} files, folder sha256 {annotation['sha256']})")
        else:
            lines.append(f"Annotations: {annotation['path']} (sha256 {annotation['sha256']})")
    settings = provenance.get("generation", {})
    recorded = {name: value for name, value in settings.items() if value != NOT_RECORDED}
    if settings and not recorded:
        lines.append(f"Generation settings: {NOT_RECORDED} (written by another tool)")
        return lines
    for name, value in settings.items():
        if isinstance(value, dict):
            value = ", ".join(f"{key}={item}" for key, item in value.items())
        elif name == "system_prompt" and value != NOT_RECORDED:
            # Quoted, so that an empty system prompt is visible.
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{name.replace('_', ' ').capitalize()}: {value}")
    return lines
