"""Chunked logit loss against a straightforward full-vocabulary computation.

Both compute the same objective on the same packed logit rows, forward and backward: the
supervised cross-entropy plus the reverse-KL distillation term (the Align-KD default). The
straightforward version converts whole [tokens, vocab] tensors to fp32 log-probabilities, as
most distillation code does; `alignkd.losses.logits.token_losses` works on chunks of rows.

    python benchmarks/logit_loss.py                     # vocab 32000, batch 2 x 2048 tokens
    python benchmarks/logit_loss.py --dtype bfloat16    # half-precision logits, as on a GPU

Peak memory is measured in a fresh process per variant (see benchmarks/common.py) and excludes
the input logits, which both variants receive already allocated.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, median_seconds, peak_memory  # noqa: E402

from alignkd.constants import IGNORE_INDEX  # noqa: E402
from alignkd.losses.logits import default_chunk_rows, token_losses  # noqa: E402

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_inputs(rows: int, vocab: int, dtype: str, supervised_fraction: float, seed: int = 0):
    """Student logits (with grad), teacher logits and targets with some rows unsupervised."""
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(rows, vocab, generator=generator) * 2).to(_DTYPES[dtype]).requires_grad_(True)
    teacher = (torch.randn(rows, vocab, generator=generator) * 2).to(_DTYPES[dtype])
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    unsupervised = torch.rand(rows, generator=generator) > supervised_fraction
    targets[unsupervised] = IGNORE_INDEX
    return student, teacher, targets


def straightforward_step(inputs) -> float:
    """Full-vocabulary fp32 cross-entropy + reverse KL, then backward."""
    student, teacher, targets = inputs
    student.grad = None
    supervised = targets != IGNORE_INDEX
    student_log_probs = F.log_softmax(student.float(), dim=-1)
    teacher_log_probs = F.log_softmax(teacher.float(), dim=-1)
    reverse_kl = (student_log_probs.exp() * (student_log_probs - teacher_log_probs)).sum(dim=-1)
    cross_entropy = F.cross_entropy(student.float(), targets, ignore_index=IGNORE_INDEX)
    loss = cross_entropy + (reverse_kl * supervised).sum() / supervised.sum().clamp(min=1)
    loss.backward()
    return float(loss.detach())


def chunked_step(inputs, chunk_size: int) -> float:
    """alignkd's chunked fused cross-entropy + reverse KL, then backward."""
    student, teacher, targets = inputs
    student.grad = None
    loss = token_losses(student, targets, teacher, divergence="reverse_kl", chunk_size=chunk_size).total
    loss.backward()
    return float(loss.detach())


def _setup(rows, vocab, dtype, supervised_fraction):
    return make_inputs(rows, vocab, dtype, supervised_fraction)


def _run_straightforward(inputs):
    straightforward_step(inputs)


def _run_chunked(inputs, chunk_size):
    chunked_step(inputs, chunk_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    parser.add_argument("--batch", type=int, default=2, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--supervised-fraction", type=float, default=1.0, help="share of rows with a target")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="dtype of the input logits")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="rows per chunk of the chunked loss (default: alignkd's default)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs (the median is reported)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per peak-memory figure")
    args = parser.parse_args(argv)

    rows = args.batch * args.tokens
    print(f"machine: {machine_description()}")
    chunk = args.chunk_size if args.chunk_size is not None else default_chunk_rows(args.vocab)
    print(f"rows {rows} ({args.batch} x {args.tokens}), vocab {args.vocab}, {args.dtype} logits, chunk {chunk} rows")

    inputs = make_inputs(rows, args.vocab, args.dtype, args.supervised_fraction)
    reference = straightforward_step(inputs)
    reference_grad = inputs[0].grad.clone()
    value = chunked_step(inputs, args.chunk_size)
    difference = (inputs[0].grad.float() - reference_grad.float()).abs().max().item()
    print(f"loss straightforward {reference:.6f}, chunked {value:.6f}; max gradient difference {difference:.2e}")
    del reference_grad

    straightforward_time = median_seconds(functools.partial(straightforward_step, inputs), runs=args.runs)
    chunked_time = median_seconds(functools.partial(chunked_step, inputs, args.chunk_size), runs=args.runs)
    del inputs

    setup = functools.partial(_setup, rows, args.vocab, args.dtype, args.supervised_fraction)
    straightforward_memory = peak_memory(setup, _run_straightforward, repeats=args.memory_repeats)
    chunked_memory = peak_memory(
        setup, functools.partial(_run_chunked, chunk_size=args.chunk_size), repeats=args.memory_repeats
    )

    mib = 1024 * 1024
    print(f"{'variant':<16}{'time (s)':>10}{'peak memory (MiB)':>20}")
    print(f"{'straightforward':<16}{straightforward_time:>10.3f}{straightforward_memory.peak_bytes / mib:>20.0f}")
    print(f"{'chunked':<16}{chunked_time:>10.3f}{chunked_memory.peak_bytes / mib:>20.0f}")
    print(
        f"chunked / straightforward: time {chunked_time / straightforward_time:.2f}, "
        f"peak memory {chunked_memory.peak_bytes / max(straightforward_memory.peak_bytes, 1):.2f} "
        f"({chunked_memory.method})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
