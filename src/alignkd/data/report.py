"""The result of the pre-flight data check: problem counts, examples and a length histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alignkd.data.problems import PROBLEM_ORDER, ProblemKind

# Width in characters of the longest bar of the printed length histogram.
_HISTOGRAM_BAR_WIDTH = 40
_PERCENTILES = (50, 90, 99)


@dataclass
class LengthHistogram:
    """Counts of sequence lengths (vision tokens expanded) in power-of-two bins.

    Attributes:
        edges: bin edges. Bin i counts the lengths in [edges[i], edges[i + 1]).
        counts: number of samples per bin.
        percentiles: selected percentiles of the lengths, {50: ..., 90: ..., 99: ...}.
        max_length: the longest sequence, or 0 when there are none.
    """

    edges: list[int]
    counts: list[int]
    percentiles: dict[int, int]
    max_length: int

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> LengthHistogram:
        if len(lengths) == 0:
            return cls(edges=[], counts=[], percentiles={}, max_length=0)
        longest = int(lengths.max())
        shortest = max(1, int(lengths.min()))
        low_exponent = math.floor(math.log2(shortest))
        top_exponent = max(low_exponent + 1, math.ceil(math.log2(longest + 1)))
        edges = [2**exponent for exponent in range(low_exponent, top_exponent + 1)]
        edges[0] = min(edges[0], int(lengths.min()))
        counts, _ = np.histogram(lengths, bins=edges)
        percentiles = {q: int(np.percentile(lengths, q, method="inverted_cdf")) for q in _PERCENTILES}
        return cls(edges=edges, counts=[int(count) for count in counts], percentiles=percentiles, max_length=longest)

    def format(self, limit: int | None = None) -> list[str]:
        if not self.counts:
            return ["  (no samples could be tokenized)"]
        lines = []
        largest = max(self.counts)
        for low, high, count in zip(self.edges, self.edges[1:], self.counts):
            bar = "#" * (round(_HISTOGRAM_BAR_WIDTH * count / largest) if largest else 0)
            marker = ""
            if limit is not None and low > limit:
                marker = "  (over max_length)"
            elif limit is not None and high - 1 > limit:
                marker = "  (partly over max_length)"
            lines.append(f"  {low:>6} - {high - 1:<6} {count:>9}  {bar}{marker}")
        stats = ", ".join(f"p{q} {value}" for q, value in self.percentiles.items())
        lines.append(f"  {stats}, max {self.max_length}")
        return lines


@dataclass
class DataReport:
    """Findings of the pre-flight check, and the samples kept.

    Attributes:
        data_path: the data file.
        template: the chat template.
        total_samples: records in the data file.
        kept_samples: samples left for training.
        image_samples, text_samples: kept samples with and without an image.
        problem_counts: number of samples per problem kind (one problem per sample).
        examples: for each problem kind, the first offending samples as "sample 'id' (row N): message".
        removed_counts: samples removed per kind (over-length samples, and all problems in skip mode).
        error_counts: samples per kind that stop the run under the chosen policy.
        notes: counts of accepted oddities, such as an image placeholder added or a truncated image accepted.
        length_histogram: lengths of all samples that could be tokenized, before the length filter.
        max_length, num_vision_tokens: the length limit and the vision tokens counted per image.
        on_error: the policy for faulty samples ("error" or "skip").
        threshold_errors: reasons why the run must stop although every problem is skippable,
            such as too large a fraction of removed samples.
        versions: the tokenizer's name and the tokenizers and transformers versions, which
            decide the token ids. Store them with a run to explain a later drift.
    """

    data_path: str
    template: str
    total_samples: int
    kept_samples: int
    image_samples: int
    text_samples: int
    problem_counts: dict[ProblemKind, int]
    examples: dict[ProblemKind, list[str]]
    removed_counts: dict[ProblemKind, int]
    error_counts: dict[ProblemKind, int]
    length_histogram: LengthHistogram
    max_length: int | None
    num_vision_tokens: int
    on_error: str
    notes: dict[str, int] = field(default_factory=dict)
    threshold_errors: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        """True when problems remain that the policy does not allow to skip."""
        return bool(self.error_counts or self.threshold_errors)

    @property
    def removed_samples(self) -> int:
        return sum(self.removed_counts.values())

    def summary(self) -> str:
        """Summarize each kind of error with its count and first offending samples, in one paragraph."""
        parts = list(self.threshold_errors)
        for kind, count in _ordered(self.error_counts):
            shown = "; ".join(self.examples.get(kind, []))
            parts.append(f"{kind.value}: {count} sample{'s' if count != 1 else ''} (first: {shown})")
        return " | ".join(parts)

    def format(self) -> str:
        """Render the report as text for a terminal or a log."""
        lines = [
            f"Data check of {self.data_path} (template {self.template!r})",
            f"  samples: {self.total_samples} in the file, {self.kept_samples} kept "
            f"({self.image_samples} with an image, {self.text_samples} text-only)",
            f"  length limit: {self.max_length if self.max_length is not None else 'none'} tokens, "
            f"counting {self.num_vision_tokens} vision tokens per image",
        ]
        if self.versions:
            lines.append("  " + ", ".join(f"{name} {value}" for name, value in self.versions.items()))

        lines.append("")
        if not self.problem_counts:
            lines.append("Problems: none")
        else:
            lines.append(f"Problems (policy on_error={self.on_error!r}):")
            for kind, count in _ordered(self.problem_counts):
                if kind in self.error_counts:
                    status = "ERROR"
                elif kind in self.removed_counts:
                    status = "removed"
                else:
                    status = ""
                lines.append(f"  {kind.value:<24} {count:>9}  {status}")
                for example in self.examples.get(kind, []):
                    lines.append(f"      {example}")

        if self.notes:
            lines.append("")
            lines.append("Notes:")
            for name, count in sorted(self.notes.items()):
                lines.append(f"  {name:<24} {count:>9}")

        lines.append("")
        measured = sum(self.length_histogram.counts)
        lines.append(
            f"Sequence lengths of the {measured} samples that could be tokenized, before the length limit "
            "(vision tokens expanded):"
        )
        lines.extend(self.length_histogram.format(self.max_length))

        lines.append("")
        if self.error_counts:
            failed = sum(self.error_counts.values())
            lines.append(f"Result: FAILED, {failed} sample{'s' if failed != 1 else ''} with errors.")
        elif self.threshold_errors:
            lines.append("Result: FAILED.")
        if self.threshold_errors:
            lines.extend(f"  {reason}" for reason in self.threshold_errors)
        if not self.has_errors:
            lines.append(f"Result: OK, {self.kept_samples} samples ready, {self.removed_samples} removed.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _ordered(counts: dict[ProblemKind, int]) -> list[tuple[ProblemKind, int]]:
    return sorted(counts.items(), key=lambda item: PROBLEM_ORDER[item[0]])
