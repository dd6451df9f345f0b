"""The `data` section of a training config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignkd.config import ConfigError

_COLOUR_CHANNELS = 3
_MAX_CHANNEL_VALUE = 255


@dataclass
class DataConfig:
    """Location, format and error policy of the training data.

    Load it with `alignkd.config.from_mapping(DataConfig, mapping)`.
    """

    path: Path
    """LLaVA-format data: a JSON list of samples (.json, parsed whole) or JSON Lines (.jsonl, read lazily)."""

    image_folder: Path | None = None
    """Folder that the samples' "image" paths are relative to. None: the data file's folder."""

    template: str = "v1"
    """Chat template: "plain" (MobileVLM pretraining), "v1" (Vicuna v1.1, finetuning) or "llama_2"."""

    system_prompt: str | None = None
    """Replacement for the template's system prompt. None keeps the template's default."""

    max_length: int | None = 2048
    """Maximum sequence length in tokens, counting each image as its expanded vision tokens. None: no limit.
    2048 is MobileVLM V2's model_max_length; Align-KD's short subset uses 512."""

    over_length: Literal["skip", "error"] = "skip"
    """Policy for samples longer than max_length: remove them with a count ("skip"), or stop ("error").
    Samples are never truncated."""

    max_over_length_fraction: float = 0.1
    """With over_length "skip", the run stops when a larger fraction of the samples is over max_length."""

    on_error: Literal["error", "skip"] = "error"
    """Policy for a sample that breaks a data rule (missing or bad image, bad conversation, no
    supervised tokens): stop before training ("error"), or remove it with a per-reason count ("skip")."""

    max_skip_fraction: float = 0.01
    """With on_error "skip", the run stops when a larger fraction of the samples is removed, counting the
    pre-flight check and images that fail to decode during training."""

    image_check: Literal["exists", "header", "decode"] = "header"
    """Depth of the pre-flight image check: "exists" (a stat), "header" (also opens the file
    and reads its size and mode) or "decode" (also decodes the pixels, the slowest). Images that fail
    later in training follow on_error."""

    accept_truncated_images: bool = False
    """Accept truncated image files as partially decoded images (counted) instead of treating them as errors."""

    max_image_pixels: int | None = None
    """Maximum image size in pixels (width x height). None: Pillow's limit (PIL.Image.MAX_IMAGE_PIXELS)."""

    max_image_bytes: int | None = None
    """Maximum image file size in bytes. None: no limit."""

    image_aspect_ratio: Literal["pad", "resize"] = "pad"
    """"pad": pad each image to a square with the image processor's mean colour, then process it
    (MobileVLM's setting). "resize": leave the aspect ratio to the processor's own resize and crop."""

    alpha_background: tuple[int, int, int] = (255, 255, 255)
    """RGB colour that transparent image regions are composited onto."""

    group_by: Literal["none", "length", "modality_length"] = "modality_length"
    """Batch grouping: "length" puts samples of similar length together, "modality_length" also keeps
    image and text-only samples in separate batches (falls back to "length" when only one is present)."""

    check_workers: int = 8
    """Threads that check image files in the pre-flight check. Checks wait mostly on file reads."""

    report_examples: int = 5
    """Number of offending sample ids that the report lists for each kind of problem."""

    def validate(self) -> None:
        if self.max_length is not None and self.max_length <= 0:
            raise ConfigError(f"max_length: expected a positive number of tokens or null, got {self.max_length}")
        for name in ("max_skip_fraction", "max_over_length_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: expected a fraction between 0 and 1, got {value}")
        for name in ("max_image_pixels", "max_image_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: expected a positive number or null, got {value}")
        if len(self.alpha_background) != _COLOUR_CHANNELS or not all(
            0 <= channel <= _MAX_CHANNEL_VALUE for channel in self.alpha_background
        ):
            raise ConfigError(
                f"alpha_background: expected three integers from 0 to 255, got {list(self.alpha_background)}"
            )
        if self.check_workers < 1:
            raise ConfigError(f"check_workers: expected at least 1, got {self.check_workers}")
        if self.report_examples < 0:
            raise ConfigError(f"report_examples: expected 0 or more, got {self.report_examples}")

        # Imported here so that the template registry is filled before the name is checked.
        from alignkd.data.templates import TEMPLATES

        if self.template not in TEMPLATES:
            raise ConfigError(
                f"template: unknown chat template {self.template!r}; available: {', '.join(sorted(TEMPLATES))}"
            )
