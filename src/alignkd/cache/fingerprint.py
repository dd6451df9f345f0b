"""Named fingerprint components: what a cached teacher output depends on, and the check against a run.

A cached value is valid for a training run only if everything that produced it is the same.
The manifest records each component under its name, and a mismatch is reported by name:

Run components, recomputed and checked whenever `distill` opens the cache:

- tokenizer: hash of the tokenizer's model, normaliser, pre-tokeniser, post-processor, added
  tokens and special-token ids (not its file layout or its padding and truncation state).
- template, system_prompt: the chat template and its resolved system prompt.
- image_preprocessing: the data config's image settings (aspect ratio handling, alpha
  background, acceptance of truncated images).
- max_length: the data config's length limit, which decides which samples are kept.
- logit_positions, temperature: which rows were stored and the softmax temperature of the
  stored log-probabilities (checked only when the run distils logits).

Teacher components, checked when the teacher is available, that is when `cache-teacher`
resumes a folder and when `distill` computes the uncached samples of a partial cache live:

- teacher: hash of every file of the teacher folder (config, weights, processor and tokenizer
  files; hidden files and Markdown files are left out).
- teacher_dtype: the dtype the teacher ran in.
- num_vision_tokens: the teacher's vision tokens per image.

A run that trains from a complete cache does not read the teacher folder, so it cannot check
the teacher components. The manifest still records them.

Each cached sample also carries a hash of its token ids, labels and preprocessed image
(`alignkd.cache.keys`), so a sample whose text or image changed under the same key is caught
when its entry is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from alignkd.cache.format import ATTENTION, LOGITS, VISION_TOKENS, CacheMismatchError
from alignkd.data.config import DataConfig
from alignkd.data.templates import get_template
from alignkd.losses.objective import ResolvedObjective

logger = logging.getLogger(__name__)

RUN_COMPONENTS = ("tokenizer", "template", "system_prompt", "image_preprocessing", "max_length")
LOGIT_COMPONENTS = ("logit_positions", "temperature")
TEACHER_COMPONENTS = ("teacher", "teacher_dtype", "num_vision_tokens")

# Hashes are shown shortened in messages; this many hex digits tell two hashes apart.
_SHOWN_HASH_DIGITS = 12
# Longer values (a system prompt) are cut in messages to this many characters.
_SHOWN_VALUE_CHARACTERS = 60
_HASHED_COMPONENTS = ("tokenizer", "teacher")
_HASH_BLOCK_BYTES = 8 * 2**20
_SKIPPED_SUFFIXES = (".md",)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def needed_outputs(settings: ResolvedObjective) -> list[str]:
    """Return the teacher output kinds that an objective reads: "logits", "attention", "vision_tokens"."""
    outputs = []
    if settings.logit_weight > 0:
        outputs.append(LOGITS)
    if settings.capture_teacher_attention:
        outputs.append(ATTENTION)
    if settings.vision_weight > 0:
        outputs.append(VISION_TOKENS)
    return outputs


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides a tokenizer's token ids, independent of how its files are laid out."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        description: dict[str, Any] = json.loads(backend.to_str())
        # Padding and truncation are call-time settings that transformers switches on and off.
        description.pop("padding", None)
        description.pop("truncation", None)
    else:
        description = {"vocabulary": sorted(tokenizer.get_vocab().items())}
    description["special_token_ids"] = {
        name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")
    }
    description["length"] = len(tokenizer)
    return _sha256_text(json.dumps(description, sort_keys=True))


def run_components(data: DataConfig, tokenizer: Any, settings: ResolvedObjective) -> dict[str, str]:
    """Compute the run components of a stage (see the module docstring), as strings."""
    template = get_template(data.template, data.system_prompt)
    image_settings = {
        "image_aspect_ratio": data.image_aspect_ratio,
        "alpha_background": list(data.alpha_background),
        "accept_truncated_images": data.accept_truncated_images,
    }
    return {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": data.template,
        "system_prompt": template.system_prompt,
        "image_preprocessing": json.dumps(image_settings, sort_keys=True),
        "max_length": str(data.max_length),
        "logit_positions": settings.teacher_logit_positions,
        "temperature": repr(float(settings.temperature)),
    }


def teacher_folder_fingerprint(folder: str | Path) -> str:
    """SHA-256 over the relative path, size and bytes of every file of a model folder.

    Hidden files and Markdown files are left out, so a model card edit does not invalidate a
    cache. Reads every weight file once (with a progress bar on a terminal).
    """
    root = Path(folder)
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and path.suffix not in _SKIPPED_SUFFIXES
    )
    digest = hashlib.sha256()
    total = sum(path.stat().st_size for path in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="hashing the teacher", disable=None) as progress:
        for path in files:
            relative = path.relative_to(root).as_posix()
            digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
            with path.open("rb") as handle:
                while block := handle.read(_HASH_BLOCK_BYTES):
                    digest.update(block)
                    progress.update(len(block))
    return digest.hexdigest()


def teacher_components(folder: str | Path, dtype: torch.dtype, num_vision_tokens: int) -> dict[str, str]:
    """Compute the teacher components (see the module docstring), as strings; hashes every file of `folder`."""
    return {
        "teacher": teacher_folder_fingerprint(folder),
        "teacher_dtype": str(dtype).removeprefix("torch."),
        "num_vision_tokens": str(num_vision_tokens),
    }


def _shown(name: str, value: str | None) -> str:
    if value is None:
        return "not recorded"
    if name in _HASHED_COMPONENTS:
        return f"hash {value[:_SHOWN_HASH_DIGITS]}"
    if len(value) > _SHOWN_VALUE_CHARACTERS:
        value = value[:_SHOWN_VALUE_CHARACTERS] + "..."
    return repr(value)


def differences(cached: Mapping[str, str], current: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    """List one phrase per component of `names` whose value differs, such as "template: 'v1' in the cache, 'plain' now"."""
    found = []
    for name in names:
        if cached.get(name) != current.get(name):
            found.append(f"{name}: {_shown(name, cached.get(name))} in the cache, {_shown(name, current.get(name))} now")
    return found


def check_components(
    cached: Mapping[str, str], current: Mapping[str, str], names: tuple[str, ...], *, cache_dir: Path, advice: str
) -> None:
    """Raise CacheMismatchError naming every component of `names` that differs.

    Args:
        cached: the manifest's components.
        current: the components of this run.
        names: the components to compare.
        cache_dir: the stage folder, named in the message.
        advice: what the user can do, appended to the message.
    """
    found = differences(cached, current, names)
    if found:
        raise CacheMismatchError(
            f"the teacher cache in {cache_dir} was made with other settings than this run: {'; '.join(found)}. {advice}"
        )
