"""Session fixtures of the training tests: a tiny teacher, a tiny student and their data."""

from __future__ import annotations

import pytest
from training_helpers import STUDENT_SPEC, TEACHER_SPEC, write_llava_data

from alignkd.models.loading import save_vlm
from alignkd.models.spec import init_model


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory, llama_tokenizer):
    """Folders of a tiny teacher, a tiny student and their training data."""
    root = tmp_path_factory.mktemp("tiny")
    for name, spec, seed in (("teacher", TEACHER_SPEC, 1), ("student", STUDENT_SPEC, 2)):
        loaded = init_model(spec, llama_tokenizer, seed=seed)
        save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, root / name)
    data = write_llava_data(root / "data")
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "data": data}
