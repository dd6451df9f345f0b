"""Fixtures of the model-layer tests (helpers live in vlm_test_helpers.py)."""

from __future__ import annotations

import pytest
from vlm_test_helpers import tiny_spec

from alignkd.models.spec import init_model


@pytest.fixture
def build_vlm(llama_tokenizer):
    """Factory: build_vlm(family, projector, **spec options) -> LoadedVLM."""

    def build(family: str = "mobilevlm", projector: str = "ldpnetv2", *, seed: int = 0, tokenizer=None, **options):
        spec = tiny_spec(family, projector, **options)
        return init_model(spec, tokenizer or llama_tokenizer, seed=seed)

    return build
