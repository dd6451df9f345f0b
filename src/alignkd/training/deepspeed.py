"""DeepSpeed support: the shipped ZeRO configs and the teacher as an inference engine.

Under ZeRO-3, transformers builds models inside `deepspeed.zero.Init`, which partitions each
parameter across ranks and leaves an empty placeholder on every rank. A teacher that is not
wrapped in a DeepSpeed engine would then run its forward on those placeholders and fail (for
example "weight must be 2-D" in the embedding). So the teacher is wrapped in an engine without
an optimizer, whose hooks gather each layer's parameters just before that layer runs. Under
ZeRO-2 and without DeepSpeed the teacher is complete on every rank and needs nothing.

NOTE: this module needs `pip install deepspeed` and CUDA GPUs. It has not been run on the CPU
machine where alignkd is developed; the README gives the launch commands.
"""

from __future__ import annotations

import copy
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from alignkd.config import ConfigError

logger = logging.getLogger(__name__)

SHIPPED_CONFIGS = {"zero2": "deepspeed_zero2.json", "zero3": "deepspeed_zero3.json"}


def resolve_deepspeed_config(name_or_path: str | None) -> str | None:
    """Return the path of a DeepSpeed JSON config: a shipped name ("zero2", "zero3") or a file."""
    if name_or_path is None:
        return None
    if name_or_path in SHIPPED_CONFIGS:
        return str(resources.files("alignkd.configs") / SHIPPED_CONFIGS[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"deepspeed: '{name_or_path}' is neither a shipped config ({', '.join(SHIPPED_CONFIGS)}) nor a file"
        )
    return str(path)


def zero_stage(config_path: str | None) -> int:
    """The ZeRO stage of a DeepSpeed JSON config (0 without one)."""
    if config_path is None:
        return 0
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    return int(config.get("zero_optimization", {}).get("stage", 0))


def prepare_teacher_for_zero3(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Wrap `teacher` in a DeepSpeed inference engine that follows the run's ZeRO-3 config.

    Returns the engine's module; DeepSpeed's hooks on its submodules gather parameters
    during the forward, so `forward_vlm` can call the tower, projector and decoder directly.
    """
    import deepspeed  # noqa: PLC0415 - optional dependency, needed only on this path

    plugin = accelerator.state.deepspeed_plugin
    config = copy.deepcopy(plugin.deepspeed_config)
    hidden_size = getattr(getattr(teacher, "config", None), "hidden_size", None)
    if hidden_size is not None:
        # Bucket sizes in the shipped config are "auto", which only the training engine
        # resolves; for an engine without optimizer they must be numbers.
        zero = config.setdefault("zero_optimization", {})
        zero["reduce_bucket_size"] = hidden_size * hidden_size
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
        zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = config.get("train_micro_batch_size_per_gpu", 1)
    if config["train_micro_batch_size_per_gpu"] == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    config.pop("train_batch_size", None)
    config["gradient_accumulation_steps"] = 1

    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    module = engine.module
    module._alignkd_zero3_engine = True
    logger.info("Prepared the teacher as a DeepSpeed ZeRO-3 inference engine")
    return module
