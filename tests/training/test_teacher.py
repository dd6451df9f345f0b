"""LiveTeacher: frozen at construction, and a partitioned teacher is rejected at its first forward."""

from __future__ import annotations

import pytest
import torch

from alignkd.errors import ModelError
from alignkd.models.spec import init_model
from alignkd.training.teacher import LiveTeacher

SPEC = {
    "family": "mobilevlm",
    "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "image_size": 16},
    "projector": {"type": "mlp2x_gelu"},
    "language": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
}


@pytest.fixture
def teacher_model(llama_tokenizer):
    return init_model(SPEC, llama_tokenizer).model


def test_construction_freezes_model(teacher_model):
    teacher_model.train()

    teacher = LiveTeacher(teacher_model)

    assert not teacher.model.training
    assert all(not parameter.requires_grad for parameter in teacher.model.parameters())


def test_partitioned_parameters_rejected(teacher_model):
    # DeepSpeed ZeRO-3 leaves size-0 placeholders in a model built under zero.Init that no
    # engine owns. The first forward raises a named error instead of failing in the embedding.
    embedding = teacher_model.get_input_embeddings()
    embedding.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    teacher = LiveTeacher(teacher_model)

    with pytest.raises(ModelError) as raised:
        teacher({"input_ids": torch.ones(1, 2, dtype=torch.long)}, settings=None)

    message = str(raised.value)
    assert "embed_tokens.weight" in message
    assert "inference engine" in message
