"""TFDS builder `fashion_mnist_debian`: Fashion-MNIST from its Debian package.

Reads the four gzipped IDX files of the Debian package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist/`; Zalando's Fashion-MNIST, MIT licence):
70,000 grey 28 x 28 pictures of clothes, 10 classes (`CLASS_NAMES`, in class-id
order). Each example is

  image   (28, 28, 1) uint8, 0 = background
  label   the class id
  index   the position of the image in its source file

Splits: `test` is the whole t10k file (10,000 images). `validation` is carved
from the train file, stratified: for each class, the 10% of its images with the
smallest md5 of their index (the decimal string, `validation_mask`), 600 per
class and 6,000 in all; `train` keeps the other 54,000. The rule depends on
nothing but the file, so the same images are held out on every run and every
machine, and an image is never in two splits.

The builder is registered as `fashion_mnist_debian`: the name `fashion_mnist`
belongs to TFDS's own builder (which downloads the files), and `tfds:fashion_mnist`
must still find that one.

    import tensorflow_datasets as tfds
    import pipeline.datasets.fashion_mnist  # registers the builder
    builder = tfds.builder("fashion_mnist_debian", data_dir="artifacts/tensorflow_datasets")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")   # {"image", "label", "index"}

`load_fashion_mnist(data_cfg, artifacts_root)` prepares this builder once into
the TFDS data dir and reads it as `pipeline.image_sources.ImageSplits` at the
configured size; the image-classification task reaches it through
`pipeline.image_sources.load_image_splits` (`data.source: fashion_mnist`).

`python -m pipeline.datasets.fashion_mnist` prints the data card.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import time
import zlib

import numpy as np
import tensorflow_datasets as tfds

from pipeline.datasets.wordnet_topics import require_file
from pipeline.image_sources import ImageSplits, data_card, format_data_card, write_sample_grid
from pipeline.sources import SPLITS, DataError

APT_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# Class ids 0..9 of the Fashion-MNIST label files.
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SHAPE = (28, 28, 1)
# (images, labels) file of each source file, by prefix.
FILES = {prefix: (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
         for prefix in ("train", "t10k")}
VALIDATION_FRACTION = 0.1
VALIDATION_RULE = ("validation = per class, the 10% of the train file's images with the "
                   "smallest md5 of their index (decimal string); train = the rest; "
                   "test = the t10k file")
READ_BATCH = 4096

# IDX element types: the third byte of the magic number -> big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str) -> np.ndarray:
    """The array of an IDX file (gzipped, as the package ships them, or plain).

    The header is two zero bytes, the element type, the number of dimensions,
    then each dimension as a big-endian uint32; the data follows, row-major.

    Raises:
      DataError: naming `path` and what is wrong: missing, not gzip, truncated,
        a bad magic number, or a data size that does not match the header.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise DataError(f"{path}: truncated gzip stream (the file is cut short)") \
                from None
        except (OSError, zlib.error) as err:
            raise DataError(f"{path}: corrupt gzip data: {err}") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, less than the 4-byte "
                        "IDX magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file: magic number 0x{raw[:4].hex()} "
                        "(expected 0x0000TTNN: element type TT, NN >= 1 dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header} "
                        f"bytes, the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes"
        raise DataError(f"{path}: {what}: dimensions {list(dims)} need {expected:,} "
                        f"bytes of data, the file has {found:,}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(
        dtype.newbyteorder("="))


def require_files(path: str = DEFAULT_DIR) -> None:
    """Raises DataPackageMissing, with the apt-get command, when a file is missing."""
    for images, labels in FILES.values():
        for name in (images, labels):
            require_file(os.path.join(path, name), APT_PACKAGE)


def read_file_pair(path: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28, 1) uint8, labels (n,) uint8) of the `prefix` files
    ("train" or "t10k") in the directory `path`; DataError names a bad file."""
    image_path, label_path = (os.path.join(path, name) for name in FILES[prefix])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[:2]:
        raise DataError(f"{image_path}: expected uint8 images of shape (n, 28, 28), "
                        f"found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{label_path}: expected uint8 labels of shape (n,), found "
                        f"{labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{label_path}: {len(labels):,} labels for the {len(images):,} "
                        f"images of {image_path}")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        bad = int(np.argmax(labels >= len(CLASS_NAMES)))
        raise DataError(f"{label_path}: label {labels[bad]} at index {bad} is not a "
                        f"class id 0..{len(CLASS_NAMES) - 1}")
    return images[..., None], labels


def validation_mask(labels: np.ndarray, fraction: float = VALIDATION_FRACTION
                    ) -> np.ndarray:
    """Boolean mask of the validation images of a train file: for each class,
    the round(fraction * count) images with the smallest md5 of their index."""
    keys = np.array([hashlib.md5(str(i).encode()).hexdigest() for i in range(len(labels))])
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = int(len(members) * fraction + 0.5)
        mask[members[np.argsort(keys[members], kind="stable")[:take]]] = True
    return mask


def read_splits(path: str = DEFAULT_DIR) -> dict[str, dict[str, np.ndarray]]:
    """Reads the four files once: split -> {"image", "label", "index"} arrays,
    in file order."""
    require_files(path)
    train_images, train_labels = read_file_pair(path, "train")
    test_images, test_labels = read_file_pair(path, "t10k")
    held_out = validation_mask(train_labels)
    splits = {}
    for split, keep in (("train", ~held_out), ("validation", held_out)):
        index = np.flatnonzero(keep)
        splits[split] = {"image": train_images[index], "label": train_labels[index],
                         "index": index.astype(np.int64)}
    splits["test"] = {"image": test_images, "label": test_labels,
                      "index": np.arange(len(test_labels), dtype=np.int64)}
    return splits


class FashionMnist(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from the Debian package dataset-fashion-mnist, with a
    stratified validation split carved from the train file."""

    name = "fashion_mnist_debian"   # `fashion_mnist` is TFDS's downloading builder
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (dataset-fashion-mnist "
                              "0.0~git20200523.55506a9-1); validation = 10% of each "
                              "class of the train file by the md5 of the index."}

    def __init__(self, *, path: str = DEFAULT_DIR, log=print, **kwargs):
        self._path = path
        self._log = log  # a line per split generated
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Fashion-MNIST (Zalando): 28x28 grey images of 10 classes of "
                        "clothes. " + VALIDATION_RULE + ".",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "index": np.int64,
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            license="MIT",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # No download: the data comes from an OS package.
        splits = read_splits(self._path)
        return {split: self._generate_examples(split, rows) for split, rows in splits.items()}

    def _generate_examples(self, split: str, rows: dict[str, np.ndarray]):
        start = time.time()
        for image, label, index in zip(rows["image"], rows["label"], rows["index"]):
            yield int(index), {"image": image, "label": int(label), "index": int(index)}
        self._log(f"[data] generated {split}: {len(rows['label']):,} images "
                  f"({time.time() - start:.1f}s)")


# ------------------------------------------------------------- the task's loader

def load_fashion_mnist(data_cfg, artifacts_root: str, log=print) -> ImageSplits:
    """The prepared builder's splits (the first `max_examples_per_split` of
    each when set: TFDS slicing reads no more) at the configured size."""
    from pipeline.sources import tfds_data_dir

    require_files(data_cfg.images_path)
    tfds.disable_progress_bar()
    builder = FashionMnist(path=data_cfg.images_path, log=log,
                           data_dir=tfds_data_dir(data_cfg, artifacts_root))
    log(f"[data] preparing TFDS {builder.name} from {data_cfg.images_path} into "
        f"{builder.data_dir} (cached after the first run)")
    builder.download_and_prepare()
    limit = data_cfg.max_examples_per_split
    images, labels, ids = {}, {}, {}
    for split in SPLITS:
        # TFDS slicing reads only what a debug run keeps.
        spec = f"{split}[:{limit}]" if limit else split
        # Read in batches: one example at a time is ~20 times slower.
        batches = list(tfds.as_numpy(builder.as_dataset(
            split=spec, shuffle_files=False, batch_size=READ_BATCH)))
        source = "t10k" if split == "test" else "train"
        images[split] = _fit_array(
            np.concatenate([b["image"] for b in batches]) if batches
            else np.zeros((0, *IMAGE_SHAPE), np.uint8), data_cfg)
        labels[split] = np.concatenate(
            [b["label"] for b in batches] or [np.zeros(0)]).astype(np.int32)
        index = np.concatenate([b["index"] for b in batches] or [np.zeros(0, np.int64)])
        ids[split] = np.array([f"{source}/{i}" for i in index], dtype=object)
    return ImageSplits(images, labels, list(CLASS_NAMES),
                       f"fashion_mnist ({builder.name} TFDS, {data_cfg.images_path})",
                       VALIDATION_RULE, ids)


def _fit_array(images: np.ndarray, data_cfg) -> np.ndarray:
    """Grey (n, 28, 28, 1) images at the configured size and channels."""
    size, channels = data_cfg.image_size, data_cfg.image_channels
    if images.shape[1:3] != (size, size):
        from PIL import Image

        images = np.stack([
            np.asarray(Image.fromarray(image[..., 0]).resize(
                (size, size), Image.Resampling.BILINEAR))[..., None]
            for image in images]) if len(images) else np.zeros((0, size, size, 1), np.uint8)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return images


def read_image_splits(path: str = DEFAULT_DIR) -> ImageSplits:
    """The package's files as ImageSplits, read directly (no TFDS)."""
    splits = read_splits(path)
    source = {"train": "train", "validation": "train", "test": "t10k"}
    return ImageSplits(
        {s: rows["image"] for s, rows in splits.items()},
        {s: rows["label"].astype(np.int32) for s, rows in splits.items()},
        list(CLASS_NAMES), f"fashion_mnist ({path})", VALIDATION_RULE,
        {s: np.array([f"{source[s]}/{i}" for i in rows["index"]], dtype=object)
         for s, rows in splits.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.fashion_mnist",
                                     description="Prints the data card of Fashion-MNIST.")
    parser.add_argument("--path", default=DEFAULT_DIR,
                        help="the directory of the four IDX files")
    parser.add_argument("--sample-grid", default="", metavar="PNG",
                        help="also write a grid of train images per class to this file")
    args = parser.parse_args(argv)
    splits = read_image_splits(args.path)
    print(format_data_card(data_card(splits)))
    if args.sample_grid:
        write_sample_grid(splits.images["train"], splits.labels["train"],
                          splits.label_names, args.sample_grid)
        print(f"sample grid: {args.sample_grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
