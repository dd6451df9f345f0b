"""Adapters: trained or frozen, seeded, and unchanged by a save and load."""

import torch
from safetensors.torch import load_file, save_file

from alignkd.losses.adapters import AlignKDAdapters, HeadAdapter


def test_head_adapter_is_linear_over_heads():
    adapter = HeadAdapter(3, 2)
    attention = torch.rand(2, 3, 4, 5)
    expected = torch.nn.functional.conv2d(attention, adapter.mix.weight[:, :, None, None], adapter.mix.bias)
    torch.testing.assert_close(adapter(attention), expected)


def test_trained_adapters_join_optimizer_and_change():
    adapters = AlignKDAdapters(4, 2, 8, 6, mode="trained", seed=1)
    optimizer = torch.optim.SGD(adapters.parameters(), lr=0.1)
    optimized = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert all(id(parameter) in optimized for parameter in adapters.parameters())

    before = {name: value.clone() for name, value in adapters.state_dict().items()}
    loss = adapters.heads(torch.rand(1, 4, 2, 3)).sum() + adapters.tokens(torch.rand(1, 3, 8)).sum()
    loss.backward()
    optimizer.step()
    for name, value in adapters.state_dict().items():
        assert not torch.equal(value, before[name]), name


def test_frozen_adapters_have_no_gradients():
    adapters = AlignKDAdapters(4, 2, 8, 6, mode="frozen", seed=1)
    assert not any(parameter.requires_grad for parameter in adapters.parameters())
    assert [parameter for parameter in adapters.parameters() if parameter.requires_grad] == []


def test_seed_fixes_initialisation():
    first = AlignKDAdapters(4, 2, 8, 6, mode="frozen", seed=7).state_dict()
    again = AlignKDAdapters(4, 2, 8, 6, mode="frozen", seed=7).state_dict()
    other = AlignKDAdapters(4, 2, 8, 6, mode="frozen", seed=8).state_dict()
    for name in first:
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["tokens.proj.weight"], other["tokens.proj.weight"])


def test_construction_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    AlignKDAdapters(4, 2, 8, 6, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_save_load_round_trip(tmp_path):
    adapters = AlignKDAdapters(4, 2, 8, 6, mode="trained", seed=3)
    with torch.no_grad():
        for parameter in adapters.parameters():
            parameter.add_(torch.randn_like(parameter))
    save_file(adapters.state_dict(), tmp_path / "adapters.safetensors")

    restored = AlignKDAdapters(4, 2, 8, 6, mode="trained", seed=99)
    restored.load_state_dict(load_file(tmp_path / "adapters.safetensors"))
    for name, value in adapters.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
