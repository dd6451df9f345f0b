"""Finding the checkpoint to resume from.

Trainer writes a checkpoint's files one after the other and `trainer_state.json` last, so a
checkpoint folder without it was cut off by a crash or a kill while being written. Such a
folder is skipped (with a warning) in favour of the newest complete one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from alignkd.errors import AlignKDError

logger = logging.getLogger(__name__)

_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")

# Files without which a checkpoint cannot continue training where it stopped.
RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "student/config.json")


def missing_resume_files(checkpoint: Path) -> list[str]:
    """The files of RESUME_FILES that `checkpoint` lacks (RNG state files are optional per rank)."""
    return [name for name in RESUME_FILES if not (checkpoint / name).is_file()]


def find_resumable_checkpoint(stage_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint under `stage_dir`, or None if there is none.

    Raises:
        AlignKDError: the newest finished checkpoint holds weights only (no optimizer,
            scheduler or trainer state), so training cannot continue from it exactly.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return None

    candidates = []
    for child in stage_dir.iterdir():
        match = _CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir():
            candidates.append((int(match.group(1)), child))

    for _, checkpoint in sorted(candidates, reverse=True):
        if not (checkpoint / "trainer_state.json").is_file():
            logger.warning("Skipping %s: it has no trainer_state.json, so it was not written completely", checkpoint)
            continue
        missing = missing_resume_files(checkpoint)
        if missing:
            raise AlignKDError(
                f"checkpoint {checkpoint} holds weights only (missing: {', '.join(missing)}), so training cannot "
                "resume from it. Start a new run from its student folder (student.path) or delete it"
            )
        return checkpoint
    return None
