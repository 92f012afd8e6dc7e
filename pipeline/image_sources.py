"""The image sources of image classification, beside the text sources of
`pipeline.sources`.

`load_image_splits(data_cfg, artifacts_root)` is what the image-classification
task calls. `data.source` picks the source:

  fashion_mnist   the TFDS builder `fashion_mnist_debian` over the Debian
                  package dataset-fashion-mnist (`pipeline.datasets.fashion_mnist`),
                  prepared once into the TFDS data dir
  image_folder    a directory with one subdirectory of PNG/JPEG files per class
                  (`data.train_path`, optional `data.validation_path` and
                  `data.test_path`; without them, an 80/10/10 split by the md5
                  of each file's path)

Both give `ImageSplits`: uint8 (n, image_size, image_size, image_channels)
arrays per split, the class names and where each image comes from. The data
card (`data_card`, `format_data_card`) and the sample grid
(`write_sample_grid`) are shared by every image source.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.files import hash_split
from pipeline.sources import SPLITS, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass
class ImageSplits:
    """The images of the three splits, as the image-classification task reads them."""

    images: dict[str, np.ndarray]   # split -> (n, H, W, C) uint8
    labels: dict[str, np.ndarray]   # split -> (n,) int32 class ids
    label_names: list[str]
    description: str = ""
    # How examples were assigned to splits (shown on the data card).
    split_rule: str = ""
    # split -> (n,) str: where each image comes from ("train/42" = index 42 of
    # Fashion-MNIST's train file; the file's path for image_folder).
    ids: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def data_card(self) -> dict:
        return data_card(self)


def _pixel_statistics(images: np.ndarray, chunk: int = 4096) -> tuple[list, list]:
    """Per-channel mean and standard deviation of the pixel values (0..255),
    summed in float64 chunks (no float copy of the whole split)."""
    channels = images.shape[-1] if images.ndim == 4 else 1
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    count = max(images.size // channels, 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def data_card(splits: ImageSplits) -> dict:
    """Examples per split and class, the image shape, the train split's pixel
    mean and standard deviation per channel (0..255) and the split rule."""
    mean, std = _pixel_statistics(splits.images["train"])
    card = {"source": splits.description, "num_classes": splits.num_classes,
            "image_shape": [int(d) for d in splits.images["train"].shape[1:]],
            "train_pixel_mean": mean, "train_pixel_std": std,
            "split_rule": splits.split_rule, "splits": {}}
    for split in SPLITS:
        counts = np.bincount(splits.labels[split], minlength=splits.num_classes)
        card["splits"][split] = {
            "examples": int(len(splits.labels[split])),
            "per_class": {n: int(c) for n, c in zip(splits.label_names, counts)},
        }
    return card


def format_data_card(card: dict) -> str:
    splits = card["splits"]
    lines = [f"Data card: {card['source']}",
             "  " + "  ".join(f"{s}: {splits[s]['examples']:,}" for s in SPLITS)
             + f" examples, {card['num_classes']} classes, images "
             + " x ".join(str(d) for d in card["image_shape"]),
             f"  train pixels (0..255): mean {card['train_pixel_mean']}  "
             f"std {card['train_pixel_std']}",
             f"  splits: {card['split_rule']}"]
    names = list(splits["train"]["per_class"])
    width = max([len(n) for n in names] + [5])
    lines.append(f"  {'class':<{width}} " + " ".join(f"{s:>10}" for s in SPLITS))
    for n in names:
        lines.append(f"  {n:<{width}} " + " ".join(
            f"{splits[s]['per_class'][n]:>10,}" for s in SPLITS))
    return "\n".join(lines)


def write_sample_grid(images: np.ndarray, labels: np.ndarray, label_names: list[str],
                      path: str, per_class: int = 8, title: str = "") -> str:
    """Writes a PNG grid, one row per class of its first `per_class` images
    (blank cells where a class has fewer), to `path` (atomically); returns
    the path."""
    from pipeline.plots import plot_image_grid

    if per_class < 1:
        raise ValueError(f"write_sample_grid: per_class must be >= 1, got {per_class}")
    images, labels = np.asarray(images), np.asarray(labels)
    cells = []
    for label in range(len(label_names)):
        chosen = list(np.flatnonzero(labels == label)[:per_class])
        cells += [images[k] for k in chosen] + [None] * (per_class - len(chosen))
    return plot_image_grid(cells, None, path, columns=per_class, title=title,
                           row_labels=list(label_names))


def load_image_splits(data_cfg, artifacts_root: str = "artifacts", log=print) -> ImageSplits:
    """The configured image source (`data_cfg.source`) as ImageSplits of uint8
    (n, image_size, image_size, image_channels) arrays.

    Raises:
      DataError: naming the file or directory that is wrong, or an empty split.
      DataPackageMissing: "fashion_mnist" without its Debian package (the
        message holds the apt-get command).
    """
    start = time.time()
    loader = IMAGE_SOURCES.get(data_cfg.source)
    if loader is None:
        raise DataError(f"config key 'data.source' = {data_cfg.source!r}: not an image "
                        "source (expected one of "
                        + ", ".join(repr(s) for s in IMAGE_SOURCES) + ")")
    # Each loader reads only the first data.max_examples_per_split of a split.
    splits = loader(data_cfg, artifacts_root, log)
    for s in SPLITS:
        if len(splits.labels[s]) == 0:
            raise DataError(f"{splits.description}: split '{s}' has no images")
    log(f"[data] {splits.description}: " + ", ".join(
        f"{s} {len(splits.labels[s]):,}" for s in SPLITS)
        + f" images of {' x '.join(map(str, splits.images['train'].shape[1:]))}, "
        f"{splits.num_classes} classes ({time.time() - start:.1f}s)")
    return splits


# ------------------------------------------------------------------- image_folder

def _class_files(root: str, what: str) -> dict[str, list[str]]:
    """Class directory -> sorted image paths relative to `root` ("cls/a.png")."""
    if not os.path.isdir(root):
        raise DataError(f"{what} = {root!r}: directory not found (expected one "
                        "subdirectory of PNG/JPEG images per class)")
    classes = {}
    for name in sorted(os.listdir(root)):
        directory = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(directory):
            continue
        files = []
        for current, subdirs, names in os.walk(directory):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for filename in sorted(names):
                if (not filename.startswith(".")
                        and filename.lower().endswith(IMAGE_EXTENSIONS)):
                    files.append(os.path.relpath(os.path.join(current, filename), root)
                                 .replace(os.sep, "/"))
        if not files:
            raise DataError(f"{directory}: empty class directory (no "
                            + "/".join(IMAGE_EXTENSIONS) + " files)")
        classes[name] = files
    if not classes:
        raise DataError(f"{what} = {root!r}: no class subdirectories (expected "
                        f"{root}/<class>/*.png)")
    return classes


def decode_image(path: str, size: int, channels: int) -> np.ndarray:
    """(size, size, channels) uint8 of a PNG or JPEG file: EXIF orientation
    applied, converted to grey ("L") or RGB, resized bilinearly.

    Raises:
      DataError: naming the file when it is not a decodable image.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16"):   # 16-bit grey PNG: keep the range
                image = Image.fromarray((np.asarray(image, np.float64) / 257.0)
                                        .round().astype(np.uint8))
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a decodable PNG/JPEG image: {err}") from None
    return array.reshape(size, size, channels)


def _load_image_folder(data_cfg, artifacts_root: str, log) -> ImageSplits:
    from pipeline.progress import Progress

    del artifacts_root  # the images are read where they are
    roots = {"train": data_cfg.train_path, "validation": data_cfg.validation_path,
             "test": data_cfg.test_path}
    if not roots["train"]:
        raise DataError("config key 'data.train_path' is empty: name the image "
                        "directory (one subdirectory per class)")
    hashed = not (roots["validation"] and roots["test"])
    files = {s: [] for s in SPLITS}   # split -> (root, relative path, class name)
    train_classes = None
    for split, root in roots.items():
        if not root:
            continue
        classes = _class_files(root, f"config key 'data.{split}_path'")
        if split == "train":
            train_classes = set(classes)
        else:
            extra = sorted(set(classes) - train_classes)
            if extra:
                raise DataError(f"{os.path.join(root, extra[0])}: class {extra[0]!r} of "
                                f"the {split} directory is not a class of the train "
                                f"directory {roots['train']}")
        for name, paths in classes.items():
            for relative in paths:
                target = split
                if split == "train" and hashed:
                    target = hash_split(relative)
                    if target != "train" and roots[target]:
                        target = "train"
                files[target].append((root, relative, name))
    names = list(data_cfg.labels) or sorted(train_classes)
    class_id = {n: i for i, n in enumerate(names)}
    unknown = sorted(train_classes - set(class_id))
    if unknown:
        raise DataError(f"{os.path.join(roots['train'], unknown[0])}: class {unknown[0]!r} "
                        f"is not in data.labels ({', '.join(names[:10])}"
                        f"{', ...' if len(names) > 10 else ''})")
    limit = data_cfg.max_examples_per_split
    size, channels = data_cfg.image_size, data_cfg.image_channels
    images, labels, ids = {}, {}, {}
    for split in SPLITS:
        rows = files[split][:limit] if limit else files[split]
        progress = Progress("[data]", f"decoding {split}", len(rows), unit="images",
                            log=log)
        decoded = []
        for root, relative, _ in rows:
            decoded.append(decode_image(os.path.join(root, relative), size, channels))
            progress.update()
        images[split] = (np.stack(decoded) if decoded
                         else np.zeros((0, size, size, channels), np.uint8))
        labels[split] = np.array([class_id[name] for _, _, name in rows], np.int32)
        ids[split] = np.array([os.path.join(root, relative) for root, relative, _ in rows],
                              dtype=object)
    if hashed:
        rule = (f"80/10/10 by the md5 of each file's path under {roots['train']} "
                "(pipeline.files.hash_split)")
        given = [s for s in ("validation", "test") if roots[s]]
        if given:
            rule += "; " + ", ".join(f"{s} = {roots[s]}" for s in given)
    else:
        rule = ", ".join(f"{s} = {roots[s]}" for s in SPLITS)
    return ImageSplits(images, labels, names, f"image_folder {roots['train']}", rule, ids)


def _load_fashion_mnist(data_cfg, artifacts_root: str, log) -> ImageSplits:
    from pipeline.datasets.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(data_cfg, artifacts_root, log)


# data.source -> loader(data_cfg, artifacts_root, log) -> ImageSplits
IMAGE_SOURCES = {"fashion_mnist": _load_fashion_mnist, "image_folder": _load_image_folder}
