"""One Align-KD optimizer step against the reference approach and the floor.

Builds a MobileVLM-style teacher and student from configs and measures, for one optimizer
step on the same batch (student AdamW step included in every variant):

a. reference: the authors' way of computing it. Both models run eager attention and return
   every layer's [batch, heads, L, L] attention, which also builds full [batch, 1, L, L] masks.
   The student keeps those maps for backward. Logits cover the full vocabulary at every
   position, and the logit loss is the teacher-weighted cross-entropy in fp16. The attention
   and vision terms read layer 0's maps and the projector outputs.
b. alignkd: `forward_vlm` with the layer-0 probe and packed logits, then the "paper" objective.
c. floor: one teacher forward without gradients plus one supervised student step, both the
   plain transformers way (SDPA, full logits, cross-entropy).
d. packed floor: the same two passes with logits only where the loss reads them (the teacher's
   forward skips its LM head, the student's cross-entropy takes the supervised rows), which is
   what alignkd's step builds on; b/d is the cost of the distillation terms themselves.

    python benchmarks/step_cost.py            # 8 layers each, 1024 tokens, 144 vision tokens, vocab 32000
    python benchmarks/step_cost.py --small    # a quick run with small sizes

Wall time is the median of several runs after a warm-up; peak memory is measured in a fresh
process per variant (see benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, median_seconds, peak_memory  # noqa: E402

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID  # noqa: E402


@dataclass
class Sizes:
    """Model and batch sizes."""

    # Decoder layers of both models.
    num_layers: int = 8
    # Teacher decoder width, heads and MLP width.
    teacher_hidden: int = 512
    teacher_heads: int = 8
    teacher_intermediate: int = 1024
    # Student decoder width, heads and MLP width.
    student_hidden: int = 256
    student_heads: int = 4
    student_intermediate: int = 512
    # Vocabulary rows.
    vocab_size: int = 32000
    # Vision tower: 96-pixel images in 8-pixel patches give 12 x 12 = 144 patches, which the
    # LDPv2 projector keeps as a 12 x 12 grid of 144 vision tokens.
    image_size: int = 96
    patch_size: int = 8
    grid_size: int = 12
    vision_hidden: int = 64
    # Expanded sequence length, batch size, and supervised tokens at the end of each sample.
    seq_length: int = 1024
    batch_size: int = 2
    answer_tokens: int = 256


SMALL = Sizes(
    num_layers=2,
    teacher_hidden=64,
    teacher_heads=4,
    teacher_intermediate=128,
    student_hidden=32,
    student_heads=2,
    student_intermediate=64,
    vocab_size=1000,
    image_size=32,
    grid_size=4,
    vision_hidden=32,
    seq_length=128,
    answer_tokens=32,
)


def _spec(sizes: Sizes, hidden: int, heads: int, intermediate: int) -> dict:
    return {
        "family": "mobilevlm",
        "vision": {
            "hidden_size": sizes.vision_hidden,
            "num_layers": 2,
            "num_heads": 2,
            "patch_size": sizes.patch_size,
            "image_size": sizes.image_size,
        },
        "projector": {"type": "ldpnetv2", "grid_size": sizes.grid_size},
        "language": {
            "hidden_size": hidden,
            "num_layers": sizes.num_layers,
            "num_heads": heads,
            "intermediate_size": intermediate,
            "vocab_size": sizes.vocab_size,
            "max_position_embeddings": sizes.seq_length,
        },
    }


def build_models(sizes: Sizes):
    from alignkd.data.train_tokenizer import train_tokenizer
    from alignkd.models.spec import init_model

    tokenizer = train_tokenizer(["a b c d e f g h"], vocab_size=64, style="llama")
    teacher = init_model(_spec(sizes, sizes.teacher_hidden, sizes.teacher_heads, sizes.teacher_intermediate), tokenizer, seed=1)
    student = init_model(_spec(sizes, sizes.student_hidden, sizes.student_heads, sizes.student_intermediate), tokenizer, seed=2)
    return teacher.model.eval(), student.model.train()


def build_batch(sizes: Sizes, num_vision_tokens: int) -> dict[str, torch.Tensor]:
    """Build a batch: BOS, 16 text tokens, the image, more text, then the supervised tokens."""
    generator = torch.Generator().manual_seed(0)
    text = sizes.seq_length - num_vision_tokens
    input_ids = torch.randint(3, sizes.vocab_size, (sizes.batch_size, text), generator=generator)
    input_ids[:, 0] = 1
    input_ids[:, 17] = IMAGE_PLACEHOLDER_ID
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -sizes.answer_tokens :] = input_ids[:, -sizes.answer_tokens :]
    pixel_values = torch.randn(sizes.batch_size, 3, sizes.image_size, sizes.image_size, generator=generator)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "pixel_values": pixel_values,
        "image_mask": torch.ones(sizes.batch_size, dtype=torch.bool),
    }


def setup(sizes: Sizes, variant: str):
    from alignkd.losses.objective import AlignKDObjective, ObjectiveConfig
    from alignkd.models.loading import get_vlm_adapter

    torch.manual_seed(0)
    teacher, student = build_models(sizes)
    teacher.requires_grad_(False)
    teacher_adapter, student_adapter = get_vlm_adapter(teacher), get_vlm_adapter(student)
    student_adapter.vision_tower.requires_grad_(False)
    if variant == "reference":
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")

    objective = AlignKDObjective(
        ObjectiveConfig(preset="paper"),
        teacher_heads=teacher_adapter.num_attention_heads,
        student_heads=student_adapter.num_attention_heads,
        teacher_width=teacher_adapter.hidden_size,
        student_width=student_adapter.hidden_size,
    )
    parameters = [p for p in student.parameters() if p.requires_grad]
    if variant != "floor":
        parameters += list(objective.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, foreach=False)
    batch = build_batch(sizes, student_adapter.num_vision_tokens)
    return teacher, student, objective, optimizer, batch


def _full_forward(model, batch, output_attentions: bool):
    """Decoder over the expanded sequence and logits at every position (the transformers way)."""
    from alignkd.models.forward import prepare_inputs
    from alignkd.models.loading import get_vlm_adapter

    adapter = get_vlm_adapter(model)
    expanded = prepare_inputs(adapter, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"], batch["image_mask"])
    outputs = adapter.decoder(
        inputs_embeds=expanded.inputs_embeds,
        attention_mask=expanded.attention_mask,
        position_ids=expanded.position_ids,
        output_attentions=output_attentions,
        use_cache=False,
    )
    logits = adapter.lm_head(outputs.last_hidden_state)
    return expanded, outputs.attentions, logits


def _shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def reference_step(state) -> None:
    teacher, student, objective, optimizer, batch = state
    adapters = objective.adapters
    with torch.no_grad():
        teacher_expanded, teacher_attentions, teacher_logits = _full_forward(teacher, batch, output_attentions=True)
    expanded, attentions, logits = _full_forward(student, batch, output_attentions=True)

    supervised = _shifted_cross_entropy(logits, expanded.labels)
    # Teacher-weighted cross-entropy in fp16 over every position.
    logit_term = -(teacher_logits.half().softmax(-1) * logits.half().log_softmax(-1)).sum(-1).mean()

    # Layer 0 maps through the head adapter, masked to the text-query x vision-key cells with a
    # full [batch, 1, L, L] mask, as the released code builds its (transposed) mask.
    spans = expanded.spans
    positions = torch.arange(logits.shape[1])
    is_text = (positions[None] >= spans.vision_end[:, None]) & (positions[None] < spans.text_end[:, None])
    is_vision = (positions[None] >= spans.vision_start[:, None]) & (positions[None] < spans.vision_end[:, None])
    cell_mask = (is_text[:, :, None] & is_vision[:, None, :])[:, None].float()
    adapted = adapters.heads(teacher_attentions[0].float())
    attention_term = ((adapted - attentions[0].float()).pow(2) * cell_mask).sum() / cell_mask.sum().clamp(min=1)

    adapted_tokens = adapters.tokens(teacher_expanded.vision_tokens)
    vision_term = (adapted_tokens - expanded.vision_tokens).pow(2).mean()
    scores = (teacher_attentions[0].float().mean(1) * is_text[:, :, None]).sum(1)
    top = (scores * is_vision).topk(16, dim=-1).indices - spans.vision_start[:, None]
    focus = (adapted_tokens - expanded.vision_tokens).pow(2).mean(-1).gather(1, top.clamp(min=0)).mean()

    loss = supervised + logit_term.float() + attention_term + vision_term + 0.1 * focus
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def alignkd_step(state) -> None:
    from alignkd.models.forward import forward_vlm

    teacher, student, objective, optimizer, batch = state
    settings = objective.settings
    with torch.no_grad():
        teacher_out = forward_vlm(
            teacher, **batch, logit_positions=settings.teacher_logit_positions, capture_attention=settings.capture_teacher_attention
        )
    student_out = forward_vlm(
        student, **batch, logit_positions=settings.student_logit_positions, capture_attention=settings.capture_student_attention
    )
    objective(student_out, teacher_out).total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def floor_step(state) -> None:
    teacher, student, _, optimizer, batch = state
    with torch.no_grad():
        _full_forward(teacher, batch, output_attentions=False)
    expanded, _, logits = _full_forward(student, batch, output_attentions=False)
    _shifted_cross_entropy(logits, expanded.labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def packed_floor_step(state) -> None:
    from alignkd.models.forward import forward_vlm

    teacher, student, _, optimizer, batch = state
    with torch.no_grad():
        forward_vlm(teacher, **batch, logit_positions="none")
    output = forward_vlm(student, **batch, logit_positions="supervised")
    F.cross_entropy(output.logits.float(), output.targets, ignore_index=IGNORE_INDEX).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


STEPS = {"reference": reference_step, "alignkd": alignkd_step, "floor": floor_step, "packed_floor": packed_floor_step}


def _run(state, variant: str) -> None:
    STEPS[variant](state)


def measure(sizes: Sizes, runs: int, memory_repeats: int) -> dict[str, dict[str, float]]:
    results = {}
    for variant in STEPS:
        state = setup(sizes, variant)
        seconds = median_seconds(functools.partial(_run, state, variant), runs=runs, warmup=1)
        del state
        memory = peak_memory(
            functools.partial(setup, sizes, variant),
            functools.partial(_run, variant=variant),
            repeats=memory_repeats,
            warmup=True,
        )
        results[variant] = {"seconds": seconds, "peak_mib": memory.peak_bytes / 2**20, "method": memory.method}
        print(f"{variant:<10} {seconds:8.3f} s {results[variant]['peak_mib']:10.0f} MiB", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small sizes for a quick check")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant (median reported)")
    parser.add_argument("--memory-repeats", type=int, default=1, help="fresh processes per peak-memory figure")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    sizes = SMALL if args.small else Sizes()
    print(f"machine: {machine_description()}")
    print(f"sizes: {dataclasses.asdict(sizes)}")
    results = measure(sizes, args.runs, args.memory_repeats)

    aligned, reference, floor, packed = (results[name] for name in ("alignkd", "reference", "floor", "packed_floor"))
    ratios = {
        "b/a time": aligned["seconds"] / reference["seconds"],
        "b/a peak memory": aligned["peak_mib"] / reference["peak_mib"],
        "b/c time": aligned["seconds"] / floor["seconds"],
        "b/c peak memory": aligned["peak_mib"] / floor["peak_mib"],
        "b/d time": aligned["seconds"] / packed["seconds"],
        "b/d peak memory": aligned["peak_mib"] / packed["peak_mib"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")

    if args.output is not None:
        record = {
            "date": datetime.date.today().isoformat(),
            "machine": machine_description(),
            "sizes": dataclasses.asdict(sizes),
            "results": results,
            "ratios": ratios,
        }
        args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
