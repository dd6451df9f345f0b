"""A tiny teacher, a tiny student and a small LLaVA data set, shared by the teacher cache tests."""

from __future__ import annotations

import pytest
from cache_helpers import FULL_VOCABULARY_K, STUDENT_SPEC, TEACHER_SPEC, write_llava_data

from alignkd.models.loading import save_vlm
from alignkd.models.spec import init_model


@pytest.fixture(scope="session")
def cache_setup(tmp_path_factory, llama_tokenizer):
    """Folders of a tiny teacher, a tiny student and their training data."""
    root = tmp_path_factory.mktemp("cache_setup")
    for name, spec, seed in (("teacher", TEACHER_SPEC, 1), ("student", STUDENT_SPEC, 2)):
        loaded = init_model(spec, llama_tokenizer, seed=seed)
        save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, root / name)
    data = write_llava_data(root / "data")
    return {"root": root, "teacher": root / "teacher", "student": root / "student", "data": data}




@pytest.fixture(scope="session")
def full_cache(cache_setup, tmp_path_factory):
    """A complete cache for the `paper` loss preset with k >= the vocabulary: (config, cache folder)."""
    from cache_helpers import distill_config, write_cache

    root = tmp_path_factory.mktemp("full_cache")
    config = distill_config(cache_setup, root / "run")
    return config, write_cache(config, root / "cache", top_k=FULL_VOCABULARY_K, shard_megabytes=0.01)
