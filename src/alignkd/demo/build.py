"""Build the embedded demo task: digit scenes, questions, LLaVA-format files and a manifest.

`build_demo_task` writes this folder:

    images/train_0000.png ...     one PNG per scene (see `alignkd.demo.scenes`)
    train.json                    LLaVA JSON: one single-turn conversation per question
    test_questions.jsonl          LLaVA evaluation questions: question_id, image, text, category
    test_answers.jsonl            annotations: question_id, answer, category
    scenes.jsonl                  per scene: image, split, digits and source scan of each cell
    task.json                     manifest: parameters, versions, counts and a content hash

Image paths are relative to the folder, which is therefore the image folder of the data
config. The same parameters give byte-identical files. A folder whose manifest has the same
parameters, scikit-learn version and content hash is reused instead of rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import PIL
import sklearn
from tqdm import tqdm

from alignkd.config import ConfigError, from_mapping, to_mapping
from alignkd.constants import IMAGE_PLACEHOLDER_TEXT
from alignkd.demo.questions import (
    Question,
    QuestionSpace,
    balanced_kind_sequence,
    default_kind_weights,
    get_question_kind,
)
from alignkd.demo.scenes import (
    DigitPools,
    ImageMode,
    Scene,
    SceneLayout,
    Split,
    compose_scenes,
    load_digit_pools,
    render_scene,
    split_rng,
    to_pil_image,
)
from alignkd.errors import DataError
from alignkd.eval.prompts import SHORT_ANSWER_SUFFIX

logger = logging.getLogger(__name__)

# Version of the folder layout and file formats. Raise it when either changes, so that folders
# written by older code are rebuilt instead of reused.
FORMAT_VERSION = 1

MANIFEST_NAME = "task.json"
IMAGES_DIR_NAME = "images"

# A kind that finds nothing to ask in this many fresh scenes in a row can never be asked under
# the current layout (for example "where" when fill_probability is 0), so the build stops.
MAX_FRESH_SCENES_WITHOUT_QUESTION = 1000

# The zlib level range that PNG writers accept.
PNG_COMPRESS_LEVELS = range(0, 10)


@dataclass
class DemoTaskConfig:
    """Parameters of the demo task. Every field is part of the cache key in `task.json`."""

    seed: int = 0
    """Seed of the scan split, the scenes and the questions."""

    num_train: int = 20_000
    """Number of training questions (one LLaVA sample each)."""

    num_test: int = 1_000
    """Number of held-out test questions."""

    train_questions_per_scene: int = 5
    """Maximum number of training questions asked about one scene. A scene gets fewer when
    the next drawn kind has nothing left to ask about it."""

    test_questions_per_scene: int = 1
    """Maximum number of test questions asked about one scene."""

    test_fraction: float = 0.2
    """Share of each digit's scans kept for test scenes. Train scenes use the rest."""

    rows: int = 2
    """Number of cell rows in a scene."""

    cols: int = 2
    """Number of cell columns in a scene."""

    cell_size: int = 16
    """Height and width of one cell in pixels. The image is rows x cell_size by cols x cell_size."""

    digit_scale: int = 2
    """Integer enlargement of the 8x8 scans. The enlarged scan must fit in a cell."""

    fill_probability: float = 0.7
    """Probability that a cell contains a digit instead of staying blank."""

    kind_weights: dict[str, float] = field(default_factory=default_kind_weights)
    """Relative share of each question kind in both splits. Kinds left out are not asked."""

    paraphrases: bool = False
    """Phrase each question with a seeded choice among its kind's templates instead of the first one."""

    short_answer_suffix: bool = True
    """End every question, in training and test files, with the short-answer instruction line
    ("Answer the question using a single word or phrase."). The short-answer evaluation adds
    that line to each test question that lacks it, so without it in training the test prompts
    differ from the training prompts."""

    image_mode: ImageMode = "L"
    """PNG colour mode: "L" (grey, one channel) or "RGB" (three equal channels). The default
    "L" stores the same pixels in a third of the raw bytes. A loader feeding a 3-channel vision
    tower converts it to RGB, as it must for any grey image in real data."""

    png_compress_level: int = 1
    """zlib level of the PNG files, 0 (none, fastest) to 9 (smallest)."""

    @property
    def layout(self) -> SceneLayout:
        """The scene geometry these parameters describe."""
        return SceneLayout(
            rows=self.rows,
            cols=self.cols,
            cell_size=self.cell_size,
            digit_scale=self.digit_scale,
            fill_probability=self.fill_probability,
        )

    def question_space(self, digits: tuple[int, ...]) -> QuestionSpace:
        """Return what questions can refer to under these parameters."""
        return QuestionSpace(rows=self.rows, cols=self.cols, digits=digits)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for name in ("num_train", "num_test", "train_questions_per_scene", "test_questions_per_scene"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")

        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction: expected a number strictly between 0 and 1, got {self.test_fraction!r}")

        if self.png_compress_level not in PNG_COMPRESS_LEVELS:
            raise ConfigError(f"png_compress_level: expected an integer from 0 to 9, got {self.png_compress_level!r}")

        self.layout.validate()

        # An empty draw checks the kind names and weights without drawing anything.
        balanced_kind_sequence(0, self.kind_weights, np.random.default_rng(0))


@dataclass(frozen=True)
class DemoTaskPaths:
    """Locations of the files of a built demo task."""

    root: Path
    """The task folder. Image paths in the JSON files are relative to it, so it is also the image folder."""

    images_dir: Path
    """Folder of the scene PNGs."""

    train_json: Path
    """LLaVA-format training conversations."""

    test_questions: Path
    """LLaVA evaluation questions (JSONL)."""

    test_answers: Path
    """Answers and categories of the test questions (JSONL)."""

    scenes: Path
    """Content of every scene (JSONL)."""

    manifest: Path
    """The `task.json` manifest."""

    @classmethod
    def for_root(cls, root: str | Path) -> DemoTaskPaths:
        """Return the paths of a task folder at `root`, whether or not it exists yet."""
        root = Path(root)
        return cls(
            root=root,
            images_dir=root / IMAGES_DIR_NAME,
            train_json=root / "train.json",
            test_questions=root / "test_questions.jsonl",
            test_answers=root / "test_answers.jsonl",
            scenes=root / "scenes.jsonl",
            manifest=root / MANIFEST_NAME,
        )

    @property
    def image_folder(self) -> Path:
        """The folder that the `image` fields are relative to."""
        return self.root

    def read_manifest(self) -> dict[str, Any]:
        """Return the parsed `task.json`, or raise DataError if it is missing or not JSON."""
        try:
            return json.loads(self.manifest.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{self.manifest} not found; build the task with build_demo_task") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{self.manifest} is not valid JSON ({error}); delete the folder and rebuild") from None


@dataclass(frozen=True)
class SceneQuestion:
    """One question about one scene of a split."""

    scene_index: int
    """Index of the scene in its split's scene list."""

    question: Question
    """The question text, answer and kind."""


def build_demo_task(
    output_dir: str | Path,
    config: DemoTaskConfig | None = None,
    *,
    force: bool = False,
    **overrides: Any,
) -> DemoTaskPaths:
    """Write the demo task to `output_dir`, or reuse the folder if it was built with the same parameters.

    `overrides` replace fields of `config` (or of the defaults), for example
    `build_demo_task(path, seed=1, num_train=40, num_test=10)`; an unknown name raises
    ConfigError. With `force`, the folder is rebuilt even when it could be reused.

    The files are written to a temporary sibling folder that replaces `output_dir` only when
    complete, so an interrupted build never leaves a folder that looks finished. An existing
    `output_dir` is replaced only if it is empty or contains a demo task manifest.
    """
    base = to_mapping(config if config is not None else DemoTaskConfig())
    config = from_mapping(DemoTaskConfig, {**base, **overrides})
    paths = DemoTaskPaths.for_root(output_dir)

    if not force and _is_reusable(paths, config):
        logger.info("Reusing the demo task in %s (same parameters and content)", paths.root)
        return paths
    _check_replaceable(paths)

    started = time.perf_counter()
    logger.info(
        "Building the demo task in %s: %d train and %d test questions, seed %d",
        paths.root,
        config.num_train,
        config.num_test,
        config.seed,
    )

    staging = paths.root.parent / f".{paths.root.name}.building-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging_paths = DemoTaskPaths.for_root(staging)
    try:
        manifest = _write_task(staging_paths, config)
        _replace_folder(staging, paths.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    logger.info(
        "Built the demo task in %.1f s: %d train and %d test scenes",
        time.perf_counter() - started,
        manifest["counts"]["train"]["scenes"],
        manifest["counts"]["test"]["scenes"],
    )
    return paths


def sample_split(
    pools: DigitPools,
    split: Split,
    config: DemoTaskConfig,
) -> tuple[list[Scene], list[SceneQuestion]]:
    """Draw the scenes and questions of `split`, deterministic for `config.seed`.

    Kinds follow `balanced_kind_sequence`. Each question goes to the current scene until the
    scene has its split's maximum number of questions, or until the next kind has nothing
    left to ask about it. Then a new scene is drawn, and scenes with no question are dropped.
    A kind has nothing left when it would repeat a subject, or for "where", when no digit
    appears exactly once.
    """
    rng = split_rng(config.seed, split)
    layout = config.layout
    space = config.question_space(pools.classes)
    num_questions = config.num_train if split == "train" else config.num_test
    per_scene = config.train_questions_per_scene if split == "train" else config.test_questions_per_scene

    scenes: list[Scene] = []
    samples: list[SceneQuestion] = []
    current: Scene | None = None
    asked: dict[str, list[Any]] = {}

    for kind_name in balanced_kind_sequence(num_questions, config.kind_weights, rng):
        kind = get_question_kind(kind_name)
        fresh_scenes_tried = 0

        while True:
            if current is None or sum(len(subjects) for subjects in asked.values()) >= per_scene:
                current = compose_scenes(pools, split, layout, 1, rng)[0]
                asked = {}

            subject = kind.choose_subject(current, space, rng, exclude=asked.get(kind_name, ()))
            if subject is not None:
                break

            if not asked:
                fresh_scenes_tried += 1
                if fresh_scenes_tried >= MAX_FRESH_SCENES_WITHOUT_QUESTION:
                    raise ConfigError(
                        f"kind_weights.{kind_name}: the question kind found nothing to ask in "
                        f"{fresh_scenes_tried} new {split} scenes in a row ({layout.rows}x{layout.cols} grid, "
                        f"fill_probability {layout.fill_probability}); set its weight to 0 or change the layout"
                    )
            current = None

        if not asked:
            scenes.append(current)
        asked.setdefault(kind_name, []).append(subject)

        template_index = int(rng.integers(len(kind.templates))) if config.paraphrases else 0
        question = kind.ask(current, subject, space, template_index)
        samples.append(SceneQuestion(scene_index=len(scenes) - 1, question=question))

    return scenes, samples


def question_prompt(question_text: str, config: DemoTaskConfig) -> str:
    """Return the question as the user turn and the test file show it, without the image placeholder."""
    if config.short_answer_suffix:
        return f"{question_text}\n{SHORT_ANSWER_SUFFIX}"
    return question_text


def _write_task(paths: DemoTaskPaths, config: DemoTaskConfig) -> dict[str, Any]:
    """Write every file of the task under `paths.root` and return the manifest."""
    pools = load_digit_pools(config.seed, config.test_fraction)
    config.layout.validate(pools.scan_shape)
    paths.images_dir.mkdir(parents=True)

    counts: dict[str, Any] = {}
    scene_records: list[dict[str, Any]] = []
    for split in ("train", "test"):
        scenes, samples = sample_split(pools, split, config)
        image_paths = _image_paths(split, len(scenes))

        _write_images(paths.root, scenes, image_paths, pools, config, split)
        scene_records.extend(
            {"image": image, "split": split, "digits": scene.digits, "scans": scene.scans}
            for scene, image in zip(scenes, image_paths)
        )

        if split == "train":
            _write_json(paths.train_json, list(_llava_samples(samples, image_paths, config)))
        else:
            questions, answers = _evaluation_records(samples, image_paths, config)
            _write_jsonl(paths.test_questions, questions)
            _write_jsonl(paths.test_answers, answers)

        counts[split] = {
            "questions": len(samples),
            "scenes": len(scenes),
            "scans": len(pools.scans(split)),
            "per_kind": dict(sorted(Counter(sample.question.kind for sample in samples).items())),
        }
    _write_jsonl(paths.scenes, scene_records)

    height, width = config.layout.canvas_shape
    manifest = {
        "format_version": FORMAT_VERSION,
        "parameters": to_mapping(config),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "pillow_version": PIL.__version__,
        "image_size": {"height": height, "width": width, "mode": config.image_mode},
        "counts": counts,
        "content_sha256": _content_hash(paths.root),
    }
    _write_json(paths.manifest, manifest, indent=2)
    return manifest


def _image_paths(split: Split, num_scenes: int) -> list[str]:
    digits = len(str(max(num_scenes - 1, 0)))
    return [f"{IMAGES_DIR_NAME}/{split}_{index:0{digits}d}.png" for index in range(num_scenes)]


def _write_images(
    root: Path,
    scenes: list[Scene],
    image_paths: list[str],
    pools: DigitPools,
    config: DemoTaskConfig,
    split: Split,
) -> None:
    layout = config.layout
    progress = tqdm(zip(scenes, image_paths), total=len(scenes), desc=f"{split} images", unit="image", disable=None)
    for scene, relative_path in progress:
        image = to_pil_image(render_scene(scene, pools, layout), config.image_mode)
        image.save(root / relative_path, format="PNG", compress_level=config.png_compress_level)


def _llava_samples(
    samples: list[SceneQuestion],
    image_paths: list[str],
    config: DemoTaskConfig,
) -> Iterator[dict[str, Any]]:
    digits = len(str(max(len(samples) - 1, 0)))
    for index, sample in enumerate(samples):
        yield {
            "id": f"train_{index:0{digits}d}",
            "image": image_paths[sample.scene_index],
            "conversations": [
                {"from": "human", "value": f"{IMAGE_PLACEHOLDER_TEXT}\n{question_prompt(sample.question.text, config)}"},
                {"from": "gpt", "value": sample.question.answer},
            ],
        }


def _evaluation_records(
    samples: list[SceneQuestion],
    image_paths: list[str],
    config: DemoTaskConfig,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    digits = len(str(max(len(samples) - 1, 0)))
    questions, answers = [], []
    for index, sample in enumerate(samples):
        question_id = f"test_{index:0{digits}d}"
        category = sample.question.kind
        questions.append(
            {
                "question_id": question_id,
                "image": image_paths[sample.scene_index],
                "text": question_prompt(sample.question.text, config),
                "category": category,
            }
        )
        answers.append({"question_id": question_id, "answer": sample.question.answer, "category": category})
    return questions, answers


def _write_json(path: Path, data: Any, indent: int | None = None) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=indent)
        handle.write("\n")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def _content_hash(root: Path) -> str:
    """Hash every file under `root` except the manifest, with its relative path, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(path for path in root.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)
    for path in files:
        relative = path.relative_to(root).as_posix()
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _is_reusable(paths: DemoTaskPaths, config: DemoTaskConfig) -> bool:
    if not paths.manifest.is_file():
        return False

    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("Rebuilding the demo task in %s: its %s is not valid JSON", paths.root, MANIFEST_NAME)
        return False

    expected = {
        "format_version": FORMAT_VERSION,
        "parameters": to_mapping(config),
        "sklearn_version": sklearn.__version__,
    }
    changed = [key for key, value in expected.items() if manifest.get(key) != value]
    if changed:
        logger.info("Rebuilding the demo task in %s: %s changed", paths.root, ", ".join(changed))
        return False

    if manifest.get("content_sha256") != _content_hash(paths.root):
        logger.warning("Rebuilding the demo task in %s: its files differ from the manifest's hash", paths.root)
        return False
    return True


def _check_replaceable(paths: DemoTaskPaths) -> None:
    root = paths.root
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"demo task output {root} exists and is not a folder; choose another output folder")
    if any(root.iterdir()) and not paths.manifest.is_file():
        raise DataError(
            f"demo task output {root} is not empty and has no {MANIFEST_NAME}, so it is not a demo task "
            "folder that may be replaced; choose an empty or new output folder"
        )


def _replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, deleting the old `target` only after the new one is in place."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        return

    retired = target.parent / f".{target.name}.replaced-{os.getpid()}"
    if retired.exists():
        shutil.rmtree(retired)
    target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired)

