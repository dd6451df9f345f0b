"""Layer-0 attention probe against all-layer eager attentions: peak memory and time of one forward.

Compares, on the same MobileVLM-style model and batch:

- probe: `forward_vlm(..., capture_attention=True)` with SDPA in every layer; the probe forms
  only layer 0's text x vision block, in blocks of query rows.
- eager: the decoder with attn_implementation "eager" and output_attentions=True, which keeps
  [batch, heads, seq, seq] for every layer (the released Align-KD code requests this).
- sdpa: `forward_vlm` without the probe, the floor that the probe adds to.

Each is run under torch.no_grad() (the teacher) and with autograd on (the student, whose
forward keeps activations for backward). Figures go to docs/benchmarks.md.

Run from the repository root:

    python benchmarks/probe_memory.py            # 8 layers, 1024 tokens
    python benchmarks/probe_memory.py --quick    # tiny sizes, a smoke run
    python benchmarks/probe_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, median_seconds, peak_memory  # noqa: E402

from alignkd.constants import IMAGE_PLACEHOLDER_ID  # noqa: E402


@dataclass
class Sizes:
    """Model and batch sizes of one benchmark run."""

    # Decoder layers.
    num_layers: int = 8
    # Decoder width.
    hidden_size: int = 256
    # Query heads (and key/value heads) per decoder layer.
    num_heads: int = 8
    # Decoder MLP width.
    intermediate_size: int = 512
    # Vocabulary rows.
    vocab_size: int = 1000
    # Image side in pixels; with 8-pixel patches, 96 px gives 12 x 12 = 144 vision tokens.
    image_size: int = 96
    # Patch side of the vision tower.
    patch_size: int = 8
    # Length of the longest expanded sequence in the batch.
    seq_length: int = 1024
    # Samples in the batch; each later sample is shorter by `length_step` tokens.
    batch_size: int = 2
    # Difference in length between consecutive samples (so the batch is padded).
    length_step: int = 128


QUICK = Sizes(
    num_layers=2,
    hidden_size=32,
    num_heads=4,
    intermediate_size=64,
    vocab_size=100,
    image_size=32,
    seq_length=64,
    length_step=8,
)


def build_model(sizes: Sizes, attn_implementation: str):
    from alignkd.models.mobilevlm import MobileVLMConfig, MobileVLMForCausalLM

    torch.manual_seed(0)
    config = MobileVLMConfig(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        max_position_embeddings=sizes.seq_length,
        mm_vision_tower="random-clip-vision",
        mm_vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": sizes.image_size,
            "patch_size": sizes.patch_size,
        },
        mm_projector_type="mlp2x_gelu",
    )
    model = MobileVLMForCausalLM(config).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def build_batch(sizes: Sizes, num_vision_tokens: int):
    """Right-padded batch whose expanded lengths are seq_length, seq_length - step, ..."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(sizes.batch_size):
        expanded = sizes.seq_length - index * sizes.length_step
        text = expanded - num_vision_tokens
        ids = torch.randint(3, sizes.vocab_size, (text,), generator=generator).tolist()
        # BOS, a short text before the image, the placeholder, then the rest of the text.
        rows.append([1] + ids[:8] + [IMAGE_PLACEHOLDER_ID] + ids[8 : text - 1])
    length = max(len(row) for row in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
    pixel_values = torch.randn(len(rows), 3, sizes.image_size, sizes.image_size, generator=generator)
    return input_ids, attention_mask, pixel_values


def setup(sizes: Sizes, method: str, device: str = "cpu"):
    from alignkd.models.adapters import get_vlm_adapter

    model = build_model(sizes, "eager" if method == "eager" else "sdpa").to(device)
    batch = build_batch(sizes, get_vlm_adapter(model).num_vision_tokens)
    return model, tuple(tensor.to(device) for tensor in batch)


def run(state, method: str, grad: bool):
    """Run one forward from the unexpanded batch to the layer-0 text x vision block (None for sdpa).

    Every method encodes the images and expands the placeholders the same way; they differ in
    how the decoder runs and how the block is obtained.
    """
    from alignkd.models.adapters import get_vlm_adapter
    from alignkd.models.forward import forward_vlm, prepare_inputs

    model, (input_ids, attention_mask, pixel_values) = state
    with torch.set_grad_enabled(grad):
        if method in ("probe", "sdpa"):
            if input_ids.is_cuda:
                torch.cuda.synchronize()
            output = forward_vlm(
                model,
                input_ids,
                attention_mask,
                None,
                pixel_values,
                logit_positions="none",
                capture_attention=method == "probe",
            )
            if input_ids.is_cuda:
                torch.cuda.synchronize()
            return output.text_vision_attention

        adapter = get_vlm_adapter(model)
        expanded = prepare_inputs(adapter, input_ids, attention_mask, None, pixel_values)
        outputs = adapter.decoder(
            inputs_embeds=expanded.inputs_embeds,
            attention_mask=expanded.attention_mask,
            position_ids=expanded.position_ids,
            output_attentions=True,
            use_cache=False,
        )
        spans = expanded.spans
        first = outputs.attentions[0]
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        return [
            first[row, :, spans.vision_end[row] : spans.text_end[row], spans.vision_start[row] : spans.vision_end[row]]
            for row in range(first.shape[0])
        ]


def measure(sizes: Sizes, runs: int, memory_repeats: int, device: str) -> list[dict]:
    results = []
    for grad in (False, True):
        for method in ("sdpa", "probe", "eager"):
            state = setup(sizes, method, device)
            call = functools.partial(run, state, method, grad)
            seconds = median_seconds(call, runs=runs, warmup=1)
            cpu_seconds = median_seconds(call, runs=runs, warmup=0, clock=time.process_time)
            del state
            memory = peak_memory(
                functools.partial(setup, sizes, method, device),
                functools.partial(run, method=method, grad=grad),
                device=device,
                repeats=memory_repeats,
                warmup=True,
            )
            results.append(
                {
                    "method": method,
                    "autograd": grad,
                    "median_seconds": round(seconds, 4),
                    "median_cpu_seconds": round(cpu_seconds, 4),
                    "peak_mib": round(memory.peak_bytes / 2**20, 1),
                    "memory_method": memory.method,
                }
            )
            print(results[-1], flush=True)
    return results


def attentions_mib(sizes: Sizes) -> float:
    """Size of all layers' fp32 attention probabilities of the padded batch (the eager output)."""
    values = sizes.num_layers * sizes.batch_size * sizes.num_heads * sizes.seq_length**2
    return values * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--device", default="cpu", help="torch device to run on, for example cuda (default: cpu)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration (default: 3)")
    parser.add_argument(
        "--memory-repeats",
        type=int,
        default=3,
        help="fresh processes per memory figure; the median is reported (default: 3)",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    sizes = QUICK if args.quick else Sizes()
    results = measure(sizes, args.runs, args.memory_repeats, args.device)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "sizes": asdict(sizes),
        "eager_attentions_mib": round(attentions_mib(sizes), 1),
        "results": results,
    }

    print(f"\n{report['date']}: {report['machine']}")
    print(f"sizes: {report['sizes']}; all-layer attentions alone: {report['eager_attentions_mib']} MiB")
    print("| method | autograd | median wall time (s) | median CPU time (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for result in results:
        autograd = "on" if result["autograd"] else "off"
        print(
            f"| {result['method']} | {autograd} | {result['median_seconds']} "
            f"| {result['median_cpu_seconds']} | {result['peak_mib']} |"
        )
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
