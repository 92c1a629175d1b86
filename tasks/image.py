"""Image classification: a vision tower with a fresh linear head, top-1 accuracy (GOAT Table 1: CLIP ViT-B/32).

Hub protocol: fit on the set's train split, report on its test split, images through the model's own
preprocessing (CLIP: resize, centre crop, normalise). GOAT's image protocol (goat/train_vit.py:268-306,
peta/tasks/cv/registry.py:43-64) adds two things a task entry can ask for: `train_holdout` (10% of the
train split, at most 5000 rows, drawn as torch's random_split with seed 0, held out and never used) and
`augment` (training images through RandomResizedCrop(scale 0.9-1.0, ratio 3/4-4/3, bicubic) instead of
the resize and centre crop; no flip). No CLIP weights and none of the 7 sets exist
offline; the offline image tasks feed real Fashion-MNIST images (Debian's `dataset-fashion-mnist`, its
own train/test split) or scikit-learn's 8x8 digits (split seeded and stratified) through the same
preprocessing and head. With a tiny random vision model that checks the pipeline, not accuracy.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from peftbench.core.errors import ConfigError
from peftbench.core.validation import check_choice
from peftbench.tasks.base import ClassificationTask, HubLoad, TaskData, register_family
from peftbench.tasks.metrics import METRICS
from peftbench.tasks.offline import tasks_with_offline
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_SOURCES = ("fashion_mnist", "digits")


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of Fashion-MNIST's `train` (60k) or `test` (10k) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise ConfigError(
            f"Fashion-MNIST is not at {FASHION_MNIST_DIR}; install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or use task=img_digits"
        )
    return _idx(images, 16).reshape(-1, 28, 28), _idx(labels, 8)


def digits(spec: Any) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 digits (8x8, 0-16 scaled to 0-255), split seeded and stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, bunch.target, test_size=float(spec.eval_fraction), random_state=int(spec.split_seed),
        stratify=bunch.target,
    )  # fmt: skip
    return (x_train, y_train), (x_eval, y_eval)


def _as_dataset(images: np.ndarray, labels: np.ndarray, cap: int | None, num_labels: int) -> Dataset:
    """Rows with hub-style `image` (PIL) and `label` columns; a cap takes a seeded subset first."""
    if cap is not None and cap < len(labels):
        keep = np.sort(np.random.default_rng(0).permutation(len(labels))[:cap])
        images, labels = images[keep], labels[keep]
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=num_labels)})
    rows = {"image": [Image.fromarray(a) for a in images], "label": [int(x) for x in labels]}
    return Dataset.from_dict(rows, features=features)


def holdout_indices(total: int, fraction: float, max_rows: int | None, seed: int) -> list[int]:
    """The train rows left after holding out `fraction` (at most `max_rows`) exactly as torch's random_split
    (seeded) would draw them: a seeded permutation, whose first total − held rows train."""
    held = int(total * fraction)
    held = min(held, max_rows) if max_rows is not None else held
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[: total - held].tolist()


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Image.Image:
    """torchvision's RandomResizedCrop (10 tries, then a centre crop within `ratio`), bicubic, with our RNG."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)


def stack_images(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
        "labels": torch.tensor([int(r["labels"]) for r in rows]),
    }


@register_family
class ImageClassification(ClassificationTask):
    family = "image"
    model_kind = "image-classification"
    modality = "image"

    def validate(self, data: str) -> None:
        super().validate(data)
        cfg = self.cfg
        for metric in cfg.metrics:
            check_choice("metric", metric, METRICS)
        check_choice("primary metric", cfg.primary, list(cfg.metrics))
        if isinstance(cfg.num_labels, bool) or not isinstance(cfg.num_labels, int) or cfg.num_labels < 2:
            raise ConfigError(f"task.num_labels={cfg.num_labels!r} is not valid; give the number of classes (>= 2)")
        if data == "offline":
            if cfg.get("offline") is None:
                raise ConfigError(
                    f"task {cfg.name!r} has no offline data (data=offline); offline image tasks: "
                    f"{', '.join(tasks_with_offline('img_'))}; use data=hub"
                )
            check_choice("task.offline.source", cfg.offline.source, OFFLINE_SOURCES)
        elif cfg.get("hub") is None:
            raise ConfigError(f"task {cfg.name!r} has no hub data (data=hub); use data=offline")

    def hub_loads(self) -> list[HubLoad]:
        """The train and eval splits, each alone: the other splits (SVHN's 531k-row `extra`, the tanganke sets'
        corruption splits) are never loaded into memory or tokenized. `datasets` still downloads and prepares
        a config whole the first time; a `data_files` call would skip them, but its cache key is one an
        offline job (HF_HUB_OFFLINE=1 after `peftbench prefetch`) is not known to find again."""
        hub = self.cfg.get("hub")
        if hub is None:
            return []
        return [HubLoad.of(hub, split) for split in (self.cfg.train_split, self.cfg.eval_split)]

    def model_head(self, processor: Any) -> dict[str, Any]:
        return {"num_labels": int(self.cfg.num_labels)}

    def collator(self, processor: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        return stack_images

    def _raw_splits(self, data: str) -> tuple[Dataset, Dataset, dict[str, Any]]:
        cfg = self.cfg
        if data == "offline":
            spec = cfg.offline
            if spec.source == "fashion_mnist":
                train, held_out = fashion_mnist("train"), fashion_mnist("test")
                how = "Fashion-MNIST's own train/test split (Debian dataset-fashion-mnist)"
            else:
                train, held_out = digits(spec)
                share = f"{1 - spec.eval_fraction:.0%}/{spec.eval_fraction:.0%}"
                how = f"scikit-learn digits split {share} (seed {spec.split_seed}, stratified on label)"
            protocol = {"name": "offline", "description": f"{how}; not a paper's protocol", "source": spec.source}
            return (
                _as_dataset(*train, cfg.max_train_samples, cfg.num_labels),
                _as_dataset(*held_out, cfg.max_eval_samples, cfg.num_labels),
                protocol,
            )
        train, held_out = (load.load() for load in self.hub_loads())
        if cfg.max_train_samples is not None:
            train = train.shuffle(seed=0).select(range(min(cfg.max_train_samples, len(train))))
        if cfg.max_eval_samples is not None:
            held_out = held_out.select(range(min(cfg.max_eval_samples, len(held_out))))
        protocol = {"name": "paper", "description": f"fit on {cfg.train_split}, report on {cfg.eval_split}",
                    "source": f"{cfg.hub.path}/{cfg.hub.name}"}  # fmt: skip
        return train, held_out, protocol

    def prepare(self, data: str, processor: Any, seed: int = 0) -> TaskData:
        train, held_out, protocol = self._raw_splits(data)
        image_key, label_key = self.cfg.image_column, self.cfg.label_column
        for rows in (train, held_out):
            check_choice("image column", image_key, rows.column_names)
            check_choice("label column", label_key, rows.column_names)
        holdout = self.cfg.get("train_holdout")
        if holdout is not None:
            total = len(train)
            train = train.select(holdout_indices(total, holdout.fraction, holdout.max_rows, holdout.seed))
            protocol["train_holdout"] = {"held_out": total - len(train), "seed": int(holdout.seed)}

        def transform(batch: dict[str, list]) -> dict[str, Any]:
            images = [image.convert("RGB") for image in batch[image_key]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixels, "labels": batch[label_key]}

        augment = self.cfg.get("augment")
        train_transform = transform if augment is None else self._augmented(processor, augment, seed)
        protocol["train_rows"], protocol["eval_rows"] = len(train), {"eval": len(held_out)}
        return TaskData(
            train=train.with_transform(train_transform), evals={"": held_out.with_transform(transform)},
            protocol=protocol, processor=processor,
        )  # fmt: skip

    def _augmented(self, processor: Any, augment: Any, seed: int) -> Callable[[dict[str, list]], dict[str, Any]]:
        """Training images through RandomResizedCrop to the processor's crop size, then its normalisation."""
        check_choice("task.augment.kind", augment.kind, ["random_resized_crop"])
        crop = processor.crop_size  # a dict or transformers' SizeDict with height and width
        size = int(crop["height"] if isinstance(crop, dict) else getattr(crop, "height", crop))
        scale, ratio = tuple(augment.scale), tuple(augment.ratio)
        rng = np.random.default_rng(seed)
        image_key, label_key = self.cfg.image_column, self.cfg.label_column

        def transform(batch: dict[str, list]) -> dict[str, Any]:
            images = [random_resized_crop(i.convert("RGB"), size, scale, ratio, rng) for i in batch[image_key]]
            pixels = processor(images=images, do_resize=False, do_center_crop=False, return_tensors="pt")
            return {"pixel_values": pixels["pixel_values"], "labels": batch[label_key]}

        return transform
