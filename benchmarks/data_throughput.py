"""Samples per second of each stage of the data layer, on synthetic LLaVA data.

Stages: parsing records (JSON list and JSON Lines), and tokenization with labels, both in
batches as the pre-flight check does and one sample at a time as `__getitem__` does. Then
image decoding and preprocessing, the whole pre-flight check, and a DataLoader over the
full dataset.

The tokenizer is a LLaMA-style BPE trained here on the synthetic text (no download), with
`--vocab-size` entries. Images are random-noise JPEGs, which decode slower than photos of
the same size because they compress worse.

    python benchmarks/data_throughput.py --samples 4000 --images 200 --workers 2

Each stage runs `--repeats` times and the median is printed, as a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tokenizers
import torch
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_description, median_seconds  # noqa: E402

from alignkd.data.config import DataConfig
from alignkd.data.conversation import parse_sample
from alignkd.data.dataset import prepare_dataset
from alignkd.data.images import open_rgb_image, preprocess_image
from alignkd.data.preflight import check_data
from alignkd.data.records import LlavaRecords
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder
from alignkd.data.train_tokenizer import train_tokenizer

WORDS = (
    "the a of in on with and is are there what how many which color picture image person people table "
    "dog cat car street sky tree building window sign red blue green white black small large left right "
    "near behind holding wearing sitting standing yes no one two three answer question describe detail"
).split()
QUESTION_SUFFIX = "Answer the question using a single word or phrase."


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def make_records(count: int, image_names: list[str], seed: int) -> list[dict]:
    """LLaVA-style samples: 80% with an image, 1 to 4 rounds, short and long answers mixed."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        turns = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                question, answer = sentence(rng, 4, 12)[:-1] + "? " + QUESTION_SUFFIX, rng.choice(WORDS)
            else:
                question, answer = (
                    sentence(rng, 5, 15),
                    " ".join(sentence(rng, 8, 30) for _ in range(rng.randint(1, 4))),
                )
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        record = {"id": f"synthetic_{index}", "conversations": turns}
        if rng.random() < 0.8:
            record["image"] = rng.choice(image_names)
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    return records


def make_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        values = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        name = f"image_{index}.jpg"
        Image.fromarray(values).save(folder / name, quality=90)
        names.append(name)
    return names


def median_rate(count: int, work: Callable[[], None], repeats: int) -> float:
    """Return `count` divided by the median wall time of `repeats` runs of `work`, after one warm-up run."""
    return count / median_seconds(work, runs=repeats, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="synthetic samples (default: 4000)")
    parser.add_argument("--images", type=int, default=200, help="distinct image files (default: 200)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument(
        "--crop", type=int, default=336, help="image processor output side (default: 336, CLIP ViT-L/14-336)"
    )
    parser.add_argument("--vocab-size", type=int, default=4000, help="vocabulary of the trained tokenizer")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="DataLoader batch size (default: 16)")
    parser.add_argument("--num-vision-tokens", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage; the median is printed")
    args = parser.parse_args()

    torch.set_num_threads(1)
    results: list[tuple[str, float, str]] = []

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        image_folder = root / "images"
        image_folder.mkdir()
        image_names = make_images(image_folder, args.images, tuple(args.image_size), args.seed)
        records = make_records(args.samples, image_names, args.seed)

        json_path = root / "data.json"
        json_path.write_text(json.dumps(records), encoding="utf-8")
        jsonl_path = root / "data.jsonl"
        jsonl_path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")

        corpus = [turn["value"] for record in records[:2000] for turn in record["conversations"]]
        tokenizer = train_tokenizer(corpus, vocab_size=args.vocab_size, style="llama")
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": args.crop}, crop_size={"height": args.crop, "width": args.crop}
        )

        # Parsing: open (index or parse whole) and read every record through the validator.
        for path in (json_path, jsonl_path):

            def parse_all(path: Path = path) -> None:
                opened = LlavaRecords(path)
                for row in range(len(opened)):
                    parse_sample(opened[row], row)

            results.append(
                (
                    f"parse {path.suffix} (open + validate)",
                    median_rate(args.samples, parse_all, args.repeats),
                    "1 process",
                )
            )

        opened = LlavaRecords(jsonl_path)
        samples = [parse_sample(opened[row], row) for row in range(len(opened))]
        encoder = ConversationEncoder(tokenizer, get_template("v1"))

        def encode_batched() -> None:
            for start in range(0, len(samples), 16):
                encoder.encode(samples[start : start + 16])

        def encode_single() -> None:
            for sample in samples:
                encoder.encode_one(sample)

        results.append(
            (
                "tokenize + labels, batches of 16",
                median_rate(args.samples, encode_batched, args.repeats),
                "tokenizer threads",
            )
        )
        results.append(
            (
                "tokenize + labels, one sample per call",
                median_rate(args.samples, encode_single, args.repeats),
                "1 process",
            )
        )

        image_paths = [image_folder / name for name in image_names]

        def decode_all() -> None:
            for path in image_paths:
                open_rgb_image(path)

        def decode_and_preprocess() -> None:
            for path in image_paths:
                preprocess_image(open_rgb_image(path), processor, "pad")

        size = f"{args.image_size[0]}x{args.image_size[1]} JPEG"
        results.append((f"decode {size} to RGB", median_rate(len(image_paths), decode_all, args.repeats), "1 process"))
        results.append(
            (
                f"decode + pad + CLIP preprocess to {args.crop}px",
                median_rate(len(image_paths), decode_and_preprocess, args.repeats),
                "1 process",
            )
        )

        for depth in ("exists", "header"):
            config = DataConfig(path=jsonl_path, image_folder=image_folder, image_check=depth)

            def run_check(config: DataConfig = config) -> None:
                check_data(config, tokenizer, args.num_vision_tokens, progress=False)

            results.append(
                (
                    f"pre-flight check, image_check={depth}",
                    median_rate(args.samples, run_check, args.repeats),
                    "tokenizer threads + 8 check threads",
                )
            )

        config = DataConfig(path=jsonl_path, image_folder=image_folder, image_check="exists")
        dataset, _ = prepare_dataset(config, tokenizer, {"student": processor}, args.num_vision_tokens, progress=False)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=args.workers,
            collate_fn=dataset.collator(),
            sampler=dataset.sampler(args.batch_size),
        )

        def iterate() -> None:
            for _ in loader:
                pass

        results.append(
            (
                f"DataLoader, batch {args.batch_size}, full items",
                median_rate(len(dataset), iterate, args.repeats),
                f"{args.workers} workers",
            )
        )

    print(f"Machine: {machine_description()}")
    print(f"tokenizers {tokenizers.__version__}, Pillow {Image.__version__}")
    print(f"{args.samples} samples, {args.images} images of {args.image_size[0]}x{args.image_size[1]}")
    print()
    print("| stage | samples/s | parallelism |")
    print("|---|---:|---|")
    for name, value, parallelism in results:
        print(f"| {name} | {value:,.0f} | {parallelism} |")


if __name__ == "__main__":
    main()
