"""Sample keys and sample hashes: how a cache entry is found and checked for a training sample.

A sample's key is its LLaVA "id" when the id occurs once in the data file, so reordering the
file keeps every entry valid. Ids that repeat get the occurrence number after a "#" from their
second occurrence on ("a", "a#2", "a#3", in file order). A record without an id is keyed by its
row ("row:17"). A generated key never equals an id that the file uses.

The key alone does not prove that the entry belongs to the sample as it is now: the entry also
stores a hash of the sample's token ids, labels and preprocessed image, compared when the entry
is read.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import torch

from alignkd.data.conversation import read_sample_id
from alignkd.data.problems import SampleProblem
from alignkd.data.records import LlavaRecords

logger = logging.getLogger(__name__)

_TOKEN_HASH_BYTES = 16


def sample_keys(records: LlavaRecords) -> list[str]:
    """Return the key of every row of a data file (see the module docstring)."""
    ids: list[str | None] = []
    for row in range(len(records)):
        try:
            ids.append(read_sample_id(records[row]))
        except SampleProblem:
            # An unreadable record is never trained on; its row still needs a key.
            ids.append(None)

    used = {sample_id for sample_id in ids if sample_id is not None}
    occurrences: dict[str, int] = {}
    keys = []
    for row, sample_id in enumerate(ids):
        if sample_id is None:
            key = f"row:{row}"
            while key in used:
                key += "#"
        else:
            count = occurrences.get(sample_id, 0) + 1
            occurrences[sample_id] = count
            key = sample_id
            if count > 1:
                key = f"{sample_id}#{count}"
                while key in used:
                    key += "#"
        used.add(key)
        keys.append(key)

    repeated = sum(1 for count in occurrences.values() if count > 1)
    if repeated:
        logger.info("%d sample ids of %s occur more than once; later occurrences are keyed as id#N", repeated, records.path)
    return keys


def sample_hash(input_ids: torch.Tensor, labels: torch.Tensor, pixel_values: torch.Tensor | None = None) -> str:
    """Hash of one sample's unexpanded token ids and labels (1-D, real tokens only) and its image.

    `pixel_values` [3, H, W] is the preprocessed image given to the teacher, hashed as fp32, so an
    image file replaced under the same name changes the hash. None for a text-only sample.
    """
    digest = hashlib.blake2b(digest_size=_TOKEN_HASH_BYTES)
    digest.update(input_ids.detach().to("cpu", torch.int64).numpy().tobytes())
    digest.update(b"|")
    digest.update(labels.detach().to("cpu", torch.int64).numpy().tobytes())
    if pixel_values is not None:
        digest.update(b"|")
        digest.update(pixel_values.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def batch_sample_hashes(batch: Mapping[str, torch.Tensor]) -> list[str]:
    """`sample_hash` of every sample of a collated batch (its real tokens, wherever the padding is).

    The image is the teacher's: `teacher_pixel_values` when the batch has them, else `pixel_values`.
    """
    real = batch["attention_mask"].cpu().bool()
    input_ids = batch["input_ids"].cpu()
    labels = batch["labels"].cpu()

    # Pixel rows cover only the samples with an image, in batch order.
    pixels = batch.get("teacher_pixel_values")
    if pixels is None:
        pixels = batch.get("pixel_values")
    image_mask = batch.get("image_mask")
    images: dict[int, torch.Tensor] = {}
    if pixels is not None and image_mask is not None:
        image_rows = image_mask.cpu().nonzero().flatten().tolist()
        images = {row: pixels[index] for index, row in enumerate(image_rows)}

    return [
        sample_hash(input_ids[row][real[row]], labels[row][real[row]], images.get(row)) for row in range(real.shape[0])
    ]
