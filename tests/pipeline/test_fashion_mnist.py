"""The fashion_mnist_debian TFDS builder (Debian dataset-fashion-mnist) and the
image sources of image classification (`pipeline.image_sources`)."""

import dataclasses
import gzip
import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, DataConfig, load_config
from pipeline.datasets.fashion_mnist import (
    CLASS_NAMES,
    DEFAULT_DIR,
    FashionMnist,
    main,
    read_idx,
    read_splits,
    validation_mask,
)
from pipeline.datasets.wordnet_topics import DataPackageMissing
from pipeline.files import hash_split
from pipeline.image_sources import (
    ImageSplits,
    data_card,
    decode_image,
    format_data_card,
    load_image_splits,
    write_sample_grid,
)
from pipeline.sources import SPLITS, DataError

QUIET = dict(log=lambda *_: None)
APT_COMMAND = "sudo apt-get install -y --no-install-recommends dataset-fashion-mnist"

# Fashion-MNIST of Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1.
EXAMPLES = {"train": 54_000, "validation": 6_000, "test": 10_000}
# The validation rule's choice on the real train file: its first indices and the
# md5 of all of them (sorted, int64 little-endian). A change here moves images
# between train and validation: bump the builder VERSION.
FIRST_VALIDATION_INDICES = [6, 27, 33, 43, 59, 60, 63, 69]
VALIDATION_INDICES_MD5 = "e9e5f6615b992539fce905c94dcea22b"


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of a uint8 array (header: 0, 0, 0x08, ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


# ------------------------------------------------------------------ read_idx

def test_read_idx_reads_gzipped_and_plain_files(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    for name in ("a.gz", "a"):
        read = read_idx(str(tmp_path / name))
        assert read.dtype == np.uint8 and read.shape == (2, 3, 4)
        np.testing.assert_array_equal(read, array)
    # Other element types are big-endian: 0x0C = int32.
    values = np.array([1, -2, 70_000], ">i4")
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0C, 1]) + np.array([3], ">u4").tobytes()
                                 + values.tobytes())
    assert read_idx(str(tmp_path / "b")).tolist() == [1, -2, 70_000]


def test_read_idx_names_the_file_and_the_fault(tmp_path):
    data = idx_bytes(np.random.default_rng(0).integers(0, 256, (10, 28, 28)))
    cases = {
        "cut.gz": (gzip.compress(data)[:-100], "truncated gzip stream"),
        "short-data.gz": (gzip.compress(data[:-5]),
                          r"truncated: dimensions \[10, 28, 28\] need 7,840 bytes of "
                          r"data, the file has 7,835"),
        "long-data": (data + b"\0", "trailing bytes"),
        "short-header": (data[:9], "truncated header"),
        "tiny": (b"\0\0", "truncated: 2 bytes"),
        "magic": (b"\x89PNG" + data[4:], "not an IDX file: magic number 0x89504e47"),
        "bad-gzip.gz": (b"\x1f\x8b" + b"\xff" * 40, "gzip"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match=message) as raised:
            read_idx(str(path))
        assert str(path) in str(raised.value)
    with pytest.raises(DataError, match="file not found"):
        read_idx(str(tmp_path / "missing.gz"))


def test_a_truncated_package_file_is_named(tmp_path):
    for name in os.listdir(DEFAULT_DIR):
        (tmp_path / name).symlink_to(os.path.join(DEFAULT_DIR, name))
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.write_bytes(open(os.path.join(DEFAULT_DIR, labels.name), "rb").read()[:2000])
    with pytest.raises(DataError, match=f"{labels}: truncated gzip stream"):
        read_splits(str(tmp_path))


def test_missing_package_names_the_apt_command(tmp_path):
    missing = str(tmp_path / "fashion-mnist")
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        read_splits(missing)
    builder = FashionMnist(path=missing, data_dir=str(tmp_path), **QUIET)
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        builder.download_and_prepare()
    cfg = DataConfig(source="fashion_mnist", images_path=missing,
                     tfds_data_dir=str(tmp_path))
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        load_image_splits(cfg, str(tmp_path), **QUIET)


# ------------------------------------------------------- the real package's splits

@pytest.fixture(scope="module")
def real_splits():
    return read_splits(DEFAULT_DIR)


def test_real_splits_sizes_stratified_disjoint_and_pinned(real_splits):
    assert {s: len(real_splits[s]["label"]) for s in SPLITS} == EXAMPLES
    for split, per_class in (("train", 5_400), ("validation", 600), ("test", 1_000)):
        assert np.bincount(real_splits[split]["label"]).tolist() == [per_class] * 10
        assert real_splits[split]["image"].shape[1:] == (28, 28, 1)
        assert real_splits[split]["image"].dtype == np.uint8
    train, validation = real_splits["train"]["index"], real_splits["validation"]["index"]
    assert not set(train.tolist()) & set(validation.tolist())
    assert sorted(np.concatenate([train, validation]).tolist()) == list(range(60_000))
    assert real_splits["test"]["index"].tolist() == list(range(10_000))
    assert validation[:8].tolist() == FIRST_VALIDATION_INDICES
    assert hashlib.md5(np.sort(validation).astype("<i8").tobytes()).hexdigest() \
        == VALIDATION_INDICES_MD5


def test_validation_is_the_smallest_md5_of_each_class(real_splits):
    # The rule recomputed with plain Python on two classes.
    train, validation = real_splits["train"], real_splits["validation"]
    for label in (0, 9):
        members = np.concatenate([train["index"][train["label"] == label],
                                  validation["index"][validation["label"] == label]])
        smallest = sorted(members.tolist(),
                          key=lambda i: hashlib.md5(str(i).encode()).hexdigest())[:600]
        assert sorted(smallest) == validation["index"][validation["label"] == label].tolist()


def test_validation_mask_takes_a_rounded_share_of_every_class():
    labels = np.array([0] * 25 + [1] * 4 + [2] * 1 + [0] * 10)
    mask = validation_mask(labels)
    assert np.bincount(labels[mask], minlength=3).tolist() == [4, 0, 0]  # 3.5 -> 4, 0.4, 0.1
    assert validation_mask(labels, 0.5)[labels == 1].sum() == 2
    np.testing.assert_array_equal(validation_mask(labels), mask)


def test_data_card_and_cli_of_the_real_package(capsys, tmp_path):
    grid = tmp_path / "grid.png"
    assert main(["--sample-grid", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "train: 54,000  validation: 6,000  test: 10,000 examples, 10 classes, " \
           "images 28 x 28 x 1" in out
    assert "T-shirt/top      5,400        600      1,000" in out
    assert "smallest md5 of their index" in out
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_card_statistics():
    images = {s: np.zeros((2, 4, 4, 3), np.uint8) for s in SPLITS}
    images["train"][0, ..., 0] = 200      # channel 0: half 200, half 0
    images["train"][:, :2, :, 2] = 10     # channel 2: half 10, half 0
    labels = {"train": np.array([0, 2], np.int32), "validation": np.array([1, 1], np.int32),
              "test": np.array([0, 1], np.int32)}
    card = data_card(ImageSplits(images, labels, ["a", "b", "c"], "tiny", "by hand"))
    assert card["image_shape"] == [4, 4, 3]
    assert card["train_pixel_mean"] == [100.0, 0.0, 5.0]
    assert card["train_pixel_std"] == [100.0, 0.0, 5.0]
    assert card["splits"]["validation"] == {"examples": 2,
                                            "per_class": {"a": 0, "b": 2, "c": 0}}
    assert card["split_rule"] == "by hand"
    text = format_data_card(card)
    assert "Data card: tiny" in text and "splits: by hand" in text


# ------------------------------------------------------------ TFDS and the loader

@pytest.fixture(scope="module")
def fashion_cfg(tfds_dir):
    return DataConfig(source="fashion_mnist", tfds_data_dir=tfds_dir)


@pytest.fixture(scope="module")
def loaded(fashion_cfg, tmp_path_factory):
    """load_image_splits on the real package (the TFDS build, once per session)."""
    return load_image_splits(fashion_cfg, str(tmp_path_factory.mktemp("root")), **QUIET)


@pytest.mark.slow
def test_tfds_splits_match_the_files_and_a_second_build(loaded, real_splits, tmp_path):
    import tensorflow_datasets as tfds

    assert {s: len(loaded.labels[s]) for s in SPLITS} == EXAMPLES
    assert loaded.label_names == CLASS_NAMES
    assert np.bincount(loaded.labels["validation"]).tolist() == [600] * 10
    index = {}
    for split in SPLITS:
        assert loaded.images[split].dtype == np.uint8
        assert loaded.images[split].shape == (EXAMPLES[split], 28, 28, 1)
        assert loaded.labels[split].dtype == np.int32
        index[split] = np.array([int(i.split("/")[1]) for i in loaded.ids[split]])
        assert sorted(index[split].tolist()) == sorted(real_splits[split]["index"].tolist())
        # The image and label at each index are the file's.
        order = np.argsort(index[split])
        np.testing.assert_array_equal(loaded.images[split][order],
                                      real_splits[split]["image"])
        np.testing.assert_array_equal(loaded.labels[split][order],
                                      real_splits[split]["label"])
    assert not set(index["train"].tolist()) & set(index["validation"].tolist())
    # A second build from scratch holds the same indices in the same order.
    builder = FashionMnist(data_dir=str(tmp_path), **QUIET)
    assert builder.info.full_name == "fashion_mnist_debian/1.0.0"
    builder.download_and_prepare()
    for split in SPLITS:
        rows = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        np.testing.assert_array_equal(rows["index"], index[split])


@pytest.mark.slow
def test_fashion_mnist_debug_subset_resized_to_rgb(loaded, fashion_cfg, tmp_path):
    cfg = dataclasses.replace(fashion_cfg, max_examples_per_split=50, image_size=32,
                              image_channels=3)
    small = load_image_splits(cfg, str(tmp_path), **QUIET)
    for split in SPLITS:
        assert small.images[split].shape == (50, 32, 32, 3)
        assert small.ids[split].tolist() == loaded.ids[split][:50].tolist()
        np.testing.assert_array_equal(small.labels[split], loaded.labels[split][:50])
        channels = small.images[split]
        assert (channels[..., 0] == channels[..., 2]).all()   # grey in RGB
    assert len(set(small.labels["train"].tolist())) > 5    # TFDS order mixes the classes
    expected = np.asarray(Image.fromarray(loaded.images["test"][0, ..., 0]).resize(
        (32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(small.images["test"][0, ..., 1], expected)


def test_tfds_public_fashion_mnist_is_not_shadowed():
    import tensorflow_datasets as tfds

    assert FashionMnist.name == "fashion_mnist_debian"
    assert tfds.builder_cls("fashion_mnist") is not FashionMnist   # TFDS's own builder


# ------------------------------------------------------------------ image_folder

RED = (255, 0, 0)


def save(path, mode="L", size=(8, 8), color=128, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def folder_cfg(train, validation="", test="", **kwargs):
    return DataConfig(source="image_folder", train_path=str(train),
                      validation_path=str(validation), test_path=str(test),
                      image_size=8, **kwargs)


@pytest.fixture
def tree(tmp_path):
    """train/validation/test directories of cat and dog images in every format."""
    root = tmp_path / "images"
    save(root / "train/cat/grey.png", color=10)
    save(root / "train/cat/red.png", "RGB", (12, 9), RED)            # RGB, wrong size
    save(root / "train/cat/photo.JPG", "RGB", (20, 20), (0, 0, 255), "JPEG")
    save(root / "train/dog/a.jpeg", "RGB", (8, 8), (0, 255, 0), "JPEG")
    save(root / "train/dog/alpha.PNG", "RGBA", (30, 30), (255, 0, 0, 40), "PNG")
    save(root / "train/dog/nested/deep.png", color=50)
    (root / "train/dog/notes.txt").write_text("not an image")          # not read
    (root / "train/README").write_text("top-level files are not classes")
    save(root / "validation/cat/v.png", color=1)
    save(root / "validation/dog/v.png", color=2)
    save(root / "test/dog/t.jpg", "L", (5, 50), 3, "JPEG")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_with_split_directories(tree, channels):
    cfg = folder_cfg(tree / "train", tree / "validation", tree / "test",
                     image_channels=channels)
    splits = load_image_splits(cfg, "unused", **QUIET)
    assert splits.label_names == ["cat", "dog"]
    assert {s: len(splits.labels[s]) for s in SPLITS} == {"train": 6, "validation": 2,
                                                          "test": 1}
    for split in SPLITS:
        assert splits.images[split].shape == (len(splits.labels[split]), 8, 8, channels)
        assert splits.images[split].dtype == np.uint8
        assert splits.labels[split].dtype == np.int32
    ids = [os.path.relpath(p, tree / "train") for p in splits.ids["train"]]
    assert ids == ["cat/grey.png", "cat/photo.JPG", "cat/red.png", "dog/a.jpeg",
                   "dog/alpha.PNG", "dog/nested/deep.png"]
    assert splits.labels["train"].tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.labels["test"].tolist() == [1]
    red = splits.images["train"][2]
    if channels == 1:
        assert (red == 76).all()                       # ITU-R 601 luma of pure red
        assert (splits.images["validation"][:, :, :, 0] == [[[1]], [[2]]]).all()
    else:
        assert (red == RED).all()                      # resized from 12 x 9, colour kept
        assert (splits.images["train"][0] == 10).all()  # grey to RGB
    assert "validation = " in splits.data_card()["split_rule"]


def test_image_folder_hash_split_labels_and_limit(tmp_path):
    root = tmp_path / "train"
    for name in ("ant", "bee"):
        for i in range(40):
            save(root / name / f"{i:02d}.png", size=(4, 4), color=i)
    splits = load_image_splits(folder_cfg(root), "unused", **QUIET)
    assert sum(len(splits.labels[s]) for s in SPLITS) == 80
    for split in SPLITS:
        for path in splits.ids[split]:
            assert hash_split(os.path.relpath(path, root)) == split
    assert "md5" in splits.data_card()["split_rule"]
    # data.labels sets the class ids; max_examples_per_split keeps the first ones.
    again = load_image_splits(folder_cfg(root, labels=["bee", "ant"],
                                         max_examples_per_split=3), "unused", **QUIET)
    assert again.label_names == ["bee", "ant"]
    for split in SPLITS:
        assert again.ids[split].tolist() == splits.ids[split][:3].tolist()
        np.testing.assert_array_equal(again.labels[split], 1 - splits.labels[split][:3])


def test_image_folder_errors_name_the_file(tree, tmp_path):
    splits_of = (tree / "train", tree / "validation", tree / "test")
    corrupt = tree / "train/cat/corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DataError, match=f"{corrupt}: not a decodable PNG/JPEG image"):
        load_image_splits(folder_cfg(*splits_of), "unused", **QUIET)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buffer, format="JPEG")
    corrupt.unlink()
    cut = tree / "train/cat/cut.jpg"
    cut.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(DataError, match=f"{cut}: not a decodable"):
        decode_image(str(cut), 8, 3)
    cut.unlink()

    (tree / "train/empty").mkdir()
    with pytest.raises(DataError, match=f"{tree / 'train/empty'}: empty class directory"):
        load_image_splits(folder_cfg(*splits_of), "unused", **QUIET)
    (tree / "train/empty").rmdir()

    save(tree / "test/fox/f.png")
    with pytest.raises(DataError, match=f"{tree / 'test/fox'}: class 'fox' of the test "
                                        "directory is not a class of the train"):
        load_image_splits(folder_cfg(*splits_of), "unused", **QUIET)
    with pytest.raises(DataError, match=f"'{tmp_path / 'nowhere'}': directory not found"):
        load_image_splits(folder_cfg(tmp_path / "nowhere"), "unused", **QUIET)
    with pytest.raises(DataError, match="'cat' is not in data.labels"):
        load_image_splits(folder_cfg(tree / "train", labels=["dog"]), "unused", **QUIET)
    with pytest.raises(DataError, match="data.train_path"):
        load_image_splits(folder_cfg(""), "unused", **QUIET)
    with pytest.raises(DataError, match="'wordnet_topics': not an image source"):
        load_image_splits(DataConfig(), "unused", **QUIET)


def test_image_folder_split_without_images_is_an_error(tmp_path):
    save(tmp_path / "train/only/one.png")
    with pytest.raises(DataError, match="split '(validation|test)' has no images"):
        load_image_splits(folder_cfg(tmp_path / "train"), "unused", **QUIET)


# ------------------------------------------------------------ sample grid, config

def test_write_sample_grid(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 1, 2, 0, 1, 0])   # class 2 has fewer than per_class
    path = tmp_path / "report" / "samples.png"
    for channels in (1, 3):
        images = rng.integers(0, 256, (len(labels), 10, 10, channels), dtype=np.uint8)
        assert write_sample_grid(images, labels, ["a", "b", "c"], str(path),
                                 per_class=3) == str(path)
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 200
    assert os.listdir(path.parent) == ["samples.png"]   # no temporary file left
    with pytest.raises(ValueError, match="per_class"):
        write_sample_grid(images, labels, ["a", "b", "c"], str(path), per_class=0)


def test_config_image_keys_are_validated():
    cfg = load_config(None, ["data.image_size=32", "data.image_channels=3"])
    assert (cfg.data.image_size, cfg.data.image_channels) == (32, 3)
    cfg = DataConfig()
    assert (cfg.images_path, cfg.image_size, cfg.image_channels) == (
        DEFAULT_DIR, 28, 1)
    with pytest.raises(ConfigError, match=r"config key 'data\.image_size' = 3: expected >= 4"):
        load_config(None, ["data.image_size=3"])
    with pytest.raises(ConfigError, match=r"'data\.image_channels' = 2: expected 1 .* or 3"):
        load_config(None, ["data.image_channels=2"])
