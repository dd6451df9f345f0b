"""Teacher cache: bytes per token against dense fp16 logits, loss difference at top-k, and step time.

On small MobileVLM-style models with a 32000-token vocabulary (the LLaMA tokenizer's size; a
small trained tokenizer padded with added tokens), this script

1. writes teacher caches with `alignkd cache-teacher`'s writer and reads the bytes per logit
   row from their manifests: the stored tensors, and the whole files (safetensors headers and
   index files included), against a dense fp16 row of 2 x 32000 bytes;
2. measures the relative difference between the logit term computed from the cache and from
   the live teacher, per divergence and k, with the teacher's mean mass inside the top k. The
   teacher is measured randomly initialised (close to uniform: the worst case), then after a
   few and after many supervised steps on the data (peaked, as trained LLMs are on answer
   tokens). Last, the student is trained as long too, which brings its tail mass down;
3. times one training micro-step (teacher outputs, student forward and backward through the
   Align-KD objective; the optimizer step is the same for both and left out) with the live
   teacher and with the cache, on the randomly initialised models, median over repeats.

torch runs on one thread by default: on a machine shared with other jobs, two threads that
wait for each other at every operation make timings far noisier.

Run from the repository root:

    python benchmarks/teacher_cache.py            # the figures in docs/benchmarks.md
    python benchmarks/teacher_cache.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import logging
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, median_seconds  # noqa: E402

from alignkd.cache.reader import CachedTeacher  # noqa: E402
from alignkd.cache.writer import CacheOptions, write_teacher_cache  # noqa: E402
from alignkd.config import from_mapping  # noqa: E402
from alignkd.data.dataset import prepare_dataset  # noqa: E402
from alignkd.data.train_tokenizer import train_tokenizer  # noqa: E402
from alignkd.losses.objective import AlignKDObjective, StepNormalizers  # noqa: E402
from alignkd.models.forward import forward_vlm  # noqa: E402
from alignkd.models.loading import get_vlm_adapter, load_vlm, save_vlm  # noqa: E402
from alignkd.models.spec import init_model  # noqa: E402
from alignkd.training.config import DistillConfig  # noqa: E402
from alignkd.training.module import DistillationModule  # noqa: E402
from alignkd.training.teacher import LiveTeacher  # noqa: E402

DIVERGENCES = ["reverse_kl", "forward_kl", "jsd", "teacher_ce"]

# Text the tokenizer is trained on; the data's questions and answers come from it.
CORPUS = [
    (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    "USER: What is in the image? ASSISTANT: A cat sitting on a red sofa.",
    "USER: Describe the picture. ASSISTANT: A dog runs across a green field next to a small river.",
    "USER: How many objects are there? ASSISTANT: There are three objects on the table.",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 yes no",
] * 20
QUESTIONS = ["What is in the image?", "Describe the picture.", "How many objects are there?"]
ANSWERS = [
    "A cat sitting on a red sofa.",
    "A dog runs across a green field next to a small river.",
    "There are three objects on the table.",
    "yes",
    "the quick brown fox jumps over the lazy dog",
]


@dataclass
class Sizes:
    """Model, data and measurement sizes of one benchmark run."""

    # Vocabulary entries (tokenizer length).
    vocab_size: int = 32000
    # Teacher language model: width, layers, heads.
    teacher_hidden: int = 512
    teacher_layers: int = 4
    teacher_heads: int = 8
    # Student language model: width, layers, heads.
    student_hidden: int = 128
    student_layers: int = 2
    student_heads: int = 4
    # Image side in pixels; 8-pixel patches and a 4 x 4 projector grid give 16 vision tokens.
    image_size: int = 64
    projector_grid: int = 4
    # Training samples (every fifth is text-only) and samples per batch.
    samples: int = 64
    batch_size: int = 8
    # Total supervised steps of the teacher at each measurement after the random one.
    teacher_training_steps: tuple[int, ...] = (4, 6, 150)
    # Supervised steps of the student for the last measurement.
    student_training_steps: int = 150
    # k values whose loss difference is measured (the default k is always included).
    k_values: tuple[int, ...] = (16, 64, 256, 1024)
    # Timed repeats of each micro-step (the median is reported).
    timing_runs: int = 7


QUICK = Sizes(
    vocab_size=2000,
    teacher_hidden=64,
    teacher_layers=2,
    teacher_heads=4,
    student_hidden=32,
    student_layers=1,
    student_heads=2,
    image_size=32,
    projector_grid=2,
    samples=16,
    batch_size=4,
    teacher_training_steps=(5, 20),
    student_training_steps=20,
    k_values=(16, 64),
    timing_runs=3,
)


def build_tokenizer(vocab_size: int):
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, style="llama")
    filler = vocab_size - len(tokenizer)
    tokenizer.add_tokens([f"<unused_{index}>" for index in range(filler)])
    return tokenizer


def model_spec(sizes: Sizes, hidden: int, layers: int, heads: int) -> dict:
    return {
        "family": "mobilevlm",
        "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "image_size": sizes.image_size},
        "projector": {"type": "ldpnetv2", "grid_size": sizes.projector_grid},
        "language": {"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "intermediate_size": 2 * hidden},
    }


def write_data(folder: Path, sizes: Sizes) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for index in range(sizes.samples):
        question = QUESTIONS[index % len(QUESTIONS)]
        answer = ANSWERS[index % len(ANSWERS)]
        sample = {"id": f"sample-{index}", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
        if index % 5 != 4:
            pixels = rng.integers(0, 256, size=(sizes.image_size, sizes.image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{index}.png")
            sample["image"] = f"{index}.png"
            sample["conversations"][0]["value"] = "<image>\n" + question
        samples.append(sample)
    path = folder / "train.json"
    path.write_text(json.dumps(samples), encoding="utf-8")
    return path


def distill_config(root: Path, data: Path, sizes: Sizes, preset: str) -> DistillConfig:
    return from_mapping(
        DistillConfig,
        {
            "teacher": {"path": str(root / "teacher")},
            "student": {"path": str(root / "student")},
            "output_dir": str(root / "run"),
            "finetune": {
                "data": {"path": str(data), "image_folder": str(data.parent / "images"), "max_length": 512},
                "optimization": {"per_device_batch_size": sizes.batch_size, "max_steps": 1},
            },
            "loss": {"preset": preset},
        },
    )


def load_batches(config: DistillConfig, student, teacher) -> tuple[object, list[dict]]:
    processors = {"student": student.image_processor, "teacher": teacher.image_processor}
    vision = max(get_vlm_adapter(student.model).num_vision_tokens, get_vlm_adapter(teacher.model).num_vision_tokens)
    dataset, _ = prepare_dataset(config.finetune.data, student.tokenizer, processors, vision, progress=False)
    collate = dataset.collator()
    items = [dataset[index] for index in range(len(dataset))]
    size = config.finetune.optimization.per_device_batch_size
    return dataset, [collate(items[start : start + size]) for start in range(0, len(items), size)]


def train_model(folder: Path, config: DistillConfig, steps: int) -> None:
    """Train the model saved in `folder` on the supervised loss for `steps` steps and save it again."""
    loaded = load_vlm(folder)
    _, batches = load_batches(config, loaded, loaded)
    model = loaded.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = batches[step % len(batches)]
        output = forward_vlm(
            model, batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
            pixel_values=batch["pixel_values"], image_mask=batch["image_mask"],
        )
        loss = torch.nn.functional.cross_entropy(output.logits.float(), output.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logging.getLogger(__name__).info("Trained %s for %d steps; last supervised loss %.4f", folder, steps, loss.item())
    save_vlm(model.eval(), loaded.tokenizer, loaded.image_processor, folder)


def storage_figures(root: Path, config: DistillConfig, sizes: Sizes, k: int) -> dict:
    """Bytes per logit row of a logits-only cache at `k`."""
    folder = root / f"storage_k{k}"
    write_teacher_cache(config, CacheOptions(out=folder, top_k=k, batch_size=sizes.batch_size))
    manifest = json.loads((folder / "finetune" / "manifest.json").read_text())
    summary = manifest["summary"]
    index_bytes = sum(shard["index_bytes"] for shard in manifest["shards"])
    file_bytes_per_row = (summary["file_bytes"] + index_bytes) / summary["logit_rows"]
    return {
        "k": k,
        "logit_rows": int(summary["logit_rows"]),
        "tensor_bytes_per_row": summary["logit_bytes_per_row"],
        "file_bytes_per_row": round(file_bytes_per_row, 1),
        "dense_fp16_bytes_per_row": summary["dense_fp16_bytes_per_row"],
        "tensor_percent_of_dense": round(100 * summary["logits_fraction_of_dense"], 3),
        "file_percent_of_dense": round(100 * file_bytes_per_row / summary["dense_fp16_bytes_per_row"], 3),
    }


def loss_differences(root: Path, config: DistillConfig, sizes: Sizes, label: str) -> list[dict]:
    """Relative difference of the logit term, cache against live teacher, per divergence and k."""
    student = load_vlm(config.student.path)
    teacher = load_vlm(config.teacher.path)
    dataset, batches = load_batches(config, student, teacher)
    settings = config.loss.resolved()
    objective = AlignKDObjective(settings, tokenizer_length=len(student.tokenizer))
    live = LiveTeacher(teacher.model)
    with torch.no_grad():
        students = [
            forward_vlm(student.model, b["input_ids"], b["attention_mask"], labels=b["labels"], pixel_values=b["pixel_values"], image_mask=b["image_mask"])
            for b in batches
        ]
        live_outputs = [live(batch, settings) for batch in batches]

    results = []
    for k in sizes.k_values:
        folder = root / f"cache_{label.replace(' ', '_').replace(',', '')}_k{k}"
        write_teacher_cache(config, CacheOptions(out=folder, top_k=k, batch_size=sizes.batch_size))
        cached = CachedTeacher.open(folder, config=config)
        cached.bind("finetune", config.finetune, dataset, student.tokenizer)
        cached_outputs = [cached(batch, settings) for batch in batches]
        mass = json.loads((folder / "finetune" / "manifest.json").read_text())["summary"]["top_k_mass_mean"]
        for divergence in DIVERGENCES:
            objective.settings = dataclasses.replace(settings, divergence=divergence)
            live_sum = cached_sum = 0.0
            for student_output, live_output, cached_output in zip(students, live_outputs, cached_outputs):
                live_sum += float(objective(student_output, live_output).terms["logits"])
                cached_sum += float(objective(student_output, cached_output).terms["logits"])
            results.append(
                {
                    "teacher": label,
                    "k": k,
                    "top_k_mass_mean": round(mass, 4),
                    "divergence": divergence,
                    "live": round(live_sum / len(batches), 5),
                    "cached": round(cached_sum / len(batches), 5),
                    "relative_difference": round((cached_sum - live_sum) / live_sum, 5),
                }
            )
            print(results[-1], flush=True)
    return results


def _micro_step(student_model, module, inputs, normalizers) -> None:
    student_model.zero_grad(set_to_none=True)
    module(**inputs, normalizers=normalizers)["loss"].backward()


def step_times(root: Path, config: DistillConfig, sizes: Sizes) -> dict:
    """Median seconds of one micro-step (teacher outputs, student forward and backward) per teacher source."""
    student = load_vlm(config.student.path)
    teacher = load_vlm(config.teacher.path)
    dataset, batches = load_batches(config, student, teacher)
    settings = config.loss.resolved()
    student_adapter = get_vlm_adapter(student.model)
    teacher_adapter = get_vlm_adapter(teacher.model)
    objective = AlignKDObjective(
        settings,
        teacher_heads=teacher_adapter.num_attention_heads,
        student_heads=student_adapter.num_attention_heads,
        teacher_width=teacher_adapter.hidden_size,
        student_width=student_adapter.hidden_size,
        tokenizer_length=len(student.tokenizer),
    )

    folder = root / "timing_cache"
    write_teacher_cache(config, CacheOptions(out=folder, batch_size=sizes.batch_size))
    cached = CachedTeacher.open(folder, config=config)
    cached.bind("finetune", config.finetune, dataset, student.tokenizer)
    sources = {"live teacher": LiveTeacher(teacher.model), "teacher cache": cached}

    results = {}
    for name, source in sources.items():
        module = DistillationModule(student.model, objective, source).train()
        timings = []
        for batch in batches:
            normalizers = StepNormalizers.from_batch(batch, settings.student_logit_positions, student_adapter.num_vision_tokens)
            inputs = {key: batch.get(key) for key in ("input_ids", "attention_mask", "labels", "image_mask", "pixel_values", "sample_index")}

            step = functools.partial(_micro_step, student.model, module, inputs, normalizers)
            timings.append(median_seconds(step, runs=sizes.timing_runs, warmup=1))
        results[name] = round(statistics.median(timings), 4)
        print(name, results[name], flush=True)
    results["cache_over_live"] = round(results["teacher cache"] / results["live teacher"], 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    sizes = QUICK if args.quick else Sizes()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        tokenizer = build_tokenizer(sizes.vocab_size)
        teacher = init_model(model_spec(sizes, sizes.teacher_hidden, sizes.teacher_layers, sizes.teacher_heads), tokenizer, seed=1)
        save_vlm(teacher.model, teacher.tokenizer, teacher.image_processor, root / "teacher")
        student = init_model(model_spec(sizes, sizes.student_hidden, sizes.student_layers, sizes.student_heads), tokenizer, seed=2)
        save_vlm(student.model, student.tokenizer, student.image_processor, root / "student")
        data = write_data(root / "data", sizes)

        timing = step_times(root, distill_config(root, data, sizes, "paper"), sizes)

        logits_only = distill_config(root, data, sizes, "vanilla-kd")
        storage = [storage_figures(root, logits_only, sizes, k) for k in sorted({64, *sizes.k_values})]
        for row in storage:
            print(row, flush=True)

        differences = loss_differences(root, logits_only, sizes, "random teacher")
        trained_steps = 0
        for total_steps in sizes.teacher_training_steps:
            train_model(root / "teacher", logits_only, total_steps - trained_steps)
            trained_steps = total_steps
            differences += loss_differences(root, logits_only, sizes, f"teacher {total_steps} steps")
        train_model(root / "student", logits_only, sizes.student_training_steps)
        label = f"teacher {trained_steps}, student {sizes.student_training_steps} steps"
        differences += loss_differences(root, logits_only, sizes, label)

    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "sizes": asdict(sizes),
        "storage": storage,
        "loss_differences": differences,
        "step_seconds": timing,
    }
    print(f"\n{report['date']}: {report['machine']}")
    print("| k | tensor bytes/row | file bytes/row | dense fp16 bytes/row | tensors % of dense | files % of dense |")
    print("|---|---|---|---|---|---|")
    for row in storage:
        print(
            f"| {row['k']} | {row['tensor_bytes_per_row']:.0f} | {row['file_bytes_per_row']} | "
            f"{row['dense_fp16_bytes_per_row']:.0f} | {row['tensor_percent_of_dense']} | {row['file_percent_of_dense']} |"
        )
    print("\n| teacher | k | top-k mass | divergence | live | cached | relative difference |")
    print("|---|---|---|---|---|---|---|")
    for row in differences:
        print(
            f"| {row['teacher']} | {row['k']} | {row['top_k_mass_mean']} | {row['divergence']} | {row['live']} | "
            f"{row['cached']} | {row['relative_difference']:+.2%} |"
        )
    print(f"\nmicro-step seconds (median): {timing}")
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
