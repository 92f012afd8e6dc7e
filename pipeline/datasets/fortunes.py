"""TFDS builder `fortunes`: the quotes of the Debian fortune cookie files.

Reads `/usr/share/games/fortunes/` of the Debian package `fortunes` (and
`fortunes-min`, which it depends on; fortune-mod's cookie files, BSD licence,
the copyright notes of single files in /usr/share/doc/fortunes/copyright). The
data of the language-model task: one example per quote.

Files. A category is a file directly in the directory, named after its topic
(`computers`, `science`, ...). `fortune_files` decides what is read:

  - `<name>.dat` files are `strfile` indexes (binary), never text; hidden files,
    subdirectories and files holding a NUL byte are not read either.
  - `<name>.u8` is fortune-mod's UTF-8 copy of `<name>` (a symlink to it in
    Debian): category `<name>`, read once, the `.u8` file preferred.
  - Offensive collections are never read. Debian ships them in the separate
    package `fortunes-off`, rot13-encoded in the subdirectory `off/`, which is
    skipped with every other subdirectory; BSD systems put them beside the
    others as `<name>-o`, which is skipped; and a file whose `.dat` index
    carries strfile's STR_ROTATED flag (rot13 text, which only offensive files
    use) is skipped.

Entries. `parse_entries` splits a file's text into quotes:

  1. An entry ends at a line holding only `%` (trailing whitespace allowed); a
     line such as `%DCL-MEM-BAD` is text. The last entry needs no `%`.
  2. Backspace overstrikes are resolved to what a terminal shows
     (`resolve_overstrike`): `_\\bn` (underline) is `n`, `I\\bI` (bold) is `I`,
     and an accent struck over a letter is the accented letter (`'\\be` is
     `é`, `,\\bc` is `ç`). Other characters (tabs, a few BEL) are kept.
  3. The text is kept as written: newlines and indentation inside an entry
     stay; trailing whitespace of each line and leading/trailing blank lines
     go. Empty entries (two `%` lines in a row) are skipped.

A file is decoded as UTF-8 (every file of fortunes 1.99.1 is), or, when it is
not valid UTF-8, as latin-1 (older cookie files were), per file. Exact
duplicate texts are kept once: the first by sorted category, then file order.

Each example is `id` (the first 16 hex digits of the md5 of the text: stable
across runs and package versions), `text` and `category` (the file name). The
split is `pipeline.files.hash_split` of the text, so a text is never in two
splits.

    import tensorflow_datasets as tfds
    import pipeline.datasets.fortunes  # registers the builder
    builder = tfds.builder("fortunes", data_dir="artifacts/tensorflow_datasets")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")   # {"id", "text", "category"}

`python -m pipeline.datasets.fortunes` prints the data card.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import struct
import sys
import unicodedata

import numpy as np
import tensorflow_datasets as tfds

from pipeline.datasets.wordnet_topics import require_file
from pipeline.files import hash_split

DEFAULT_PATH = "/usr/share/games/fortunes"
APT_PACKAGE = "fortunes"
# A category the package has always installed; named when the directory holds
# no fortune file at all (the Makefile checks the same file).
PACKAGE_FILE = "computers"
SPLITS = ("train", "validation", "test")
SEPARATOR = "%"
UTF8_SUFFIX = ".u8"
INDEX_SUFFIX = ".dat"
OFFENSIVE_SUFFIX = "-o"
STR_ROTATED = 0x4   # strfile header flag: the file's text is rot13

# An accent typed as `accent BACKSPACE letter` (or the reverse) -> combining mark.
_OVERSTRUCK_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308",
                       ",": "\u0327", "~": "\u0303"}


def _overstrike(old: str, new: str) -> str:
    """The character a terminal shows when `new` is printed over `old`."""
    if new == "_" or new == old:      # underline, bold
        return old
    if old == "_":
        return new
    if old in _OVERSTRUCK_ACCENTS and new.isalpha():
        return new + _OVERSTRUCK_ACCENTS[old]
    if new in _OVERSTRUCK_ACCENTS and old.isalpha():
        return old + _OVERSTRUCK_ACCENTS[new]
    return new


def resolve_overstrike(line: str) -> str:
    """A line typed with backspaces as it shows on a terminal (NFC)."""
    if "\b" not in line:
        return line
    cells: list[str] = []
    column = 0
    for char in line:
        if char == "\b":
            column = max(column - 1, 0)
            continue
        if column == len(cells):
            cells.append(char)
        else:
            cells[column] = _overstrike(cells[column], char)
        column += 1
    return unicodedata.normalize("NFC", "".join(cells))


def clean_entry(lines: list[str]) -> str:
    """One entry's text: overstrikes resolved, trailing whitespace of each line
    and leading/trailing blank lines removed ("" for an empty entry)."""
    return "\n".join(resolve_overstrike(line).rstrip() for line in lines).strip("\n")


def parse_entries(text: str) -> list[str]:
    """The non-empty entries of a fortune file's text, in file order."""
    entries, lines = [], []
    # Split on "\n" only: str.splitlines would also break at \x0c, \x1c or a
    # latin-1 \x85 inside a quote.
    for line in text.split("\n"):
        if line.rstrip() == SEPARATOR:
            entries.append(clean_entry(lines))
            lines = []
        else:
            lines.append(line)
    entries.append(clean_entry(lines))
    return [entry for entry in entries if entry]


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8, or latin-1 for bytes that are not UTF-8."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def is_rotated(index_path: str) -> bool:
    """True if a strfile `.dat` index marks its text file as rot13.

    The header is five big-endian uint32 (version, count, longest, shortest,
    flags) and the delimiter; a missing or short index is not rotated."""
    try:
        with open(index_path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and bool(struct.unpack(">5I", header)[4] & STR_ROTATED)


def _is_text_file(path: str) -> bool:
    with open(path, "rb") as f:
        return b"\0" not in f.read(8192)


def fortune_files(path: str = DEFAULT_PATH) -> list[tuple[str, str]]:
    """(category, file path) of every fortune file of a directory, by category;
    see the module docstring for what is skipped and why."""
    if not os.path.isdir(path):
        require_file(path, APT_PACKAGE)  # a missing directory: the apt-get command
        raise NotADirectoryError(f"{path} is a file: pass the directory of fortune "
                                 f"files, e.g. {DEFAULT_PATH}")
    chosen = {}
    for name in sorted(os.listdir(path)):   # `name` sorts before `name.u8`, which wins
        file_path = os.path.join(path, name)
        category = name.removesuffix(UTF8_SUFFIX)
        if (name.startswith(".") or name.endswith(INDEX_SUFFIX)
                or not os.path.isfile(file_path)          # off/ and other directories
                or category.endswith(OFFENSIVE_SUFFIX)
                or is_rotated(os.path.join(path, category + INDEX_SUFFIX))
                or not _is_text_file(file_path)):
            continue
        chosen[category] = file_path
    if not chosen:
        require_file(os.path.join(path, PACKAGE_FILE), APT_PACKAGE)
    return sorted(chosen.items())


def fortune_id(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:16]


def read_splits(path: str = DEFAULT_PATH, log=None) -> dict[str, list[tuple[str, str]]]:
    """Reads every fortune file once: split -> deduplicated (category, text) in
    order of sorted category, then file order. `log` is told of files read as
    latin-1."""
    splits = {split: [] for split in SPLITS}
    seen = set()
    for category, file_path in fortune_files(path):
        with open(file_path, "rb") as f:
            text, encoding = decode(f.read())
        if encoding != "utf-8" and log is not None:
            log(f"[data] {file_path}: not UTF-8, read as {encoding}")
        for entry in parse_entries(text):
            if entry not in seen:
                seen.add(entry)
                splits[hash_split(entry)].append((category, entry))
    return splits


def entry_lengths(texts: list[str]) -> dict:
    """Characters and lines per entry: median, p95 and max (zeros for none)."""
    def stats(values):
        values = np.array(values if values else [0])
        return [int(np.percentile(values, 50)), int(np.percentile(values, 95)),
                int(values.max())]

    return {"chars_p50_p95_max": stats([len(t) for t in texts]),
            "lines_p50_p95_max": stats([t.count("\n") + 1 for t in texts])}


def data_card(splits: dict[str, list[tuple[str, str]]], source: str = DEFAULT_PATH,
              name: str = "fortunes") -> dict:
    """Entries and length statistics per split, entries per category and split
    (also the card of a user's own corpus: `name` its format, one category)."""
    card = {"name": name, "source": source, "splits": {}, "categories": {}}
    counts = {split: collections.Counter(c for c, _ in rows) for split, rows in splits.items()}
    for split, rows in splits.items():
        card["splits"][split] = {"entries": len(rows),
                                 **entry_lengths([text for _, text in rows])}
    for category in sorted({c for rows in splits.values() for c, _ in rows}):
        card["categories"][category] = {split: counts[split][category] for split in splits}
    return card


def format_data_card(card: dict) -> str:
    splits = card["splits"]
    lines = [f"Data card: {card.get('name', 'fortunes')} ({card['source']})"]
    for split, row in splits.items():
        lines.append(f"  {split:<10} {row['entries']:>7,} entries  "
                     f"chars p50/p95/max {row['chars_p50_p95_max']}  "
                     f"lines p50/p95/max {row['lines_p50_p95_max']}")
    names = list(card["categories"])
    width = max([len(n) for n in names] + [len("category")])
    lines.append(f"  {len(names)} categories")
    lines.append(f"  {'category':<{width}} " + " ".join(f"{s:>10}" for s in splits))
    for name in names:
        lines.append(f"  {name:<{width}} " + " ".join(
            f"{card['categories'][name][s]:>10,}" for s in splits))
    return "\n".join(lines)


class Fortunes(tfds.core.GeneratorBasedBuilder):
    """Quotes of the fortune cookie files (Debian fortunes), with their category."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (fortunes 1:1.99.1-7.3, 43 categories)."}

    def __init__(self, *, path: str = DEFAULT_PATH, log=print, **kwargs):
        self._path = path
        self._log = log  # names files read as latin-1
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "text": tfds.features.Text(),
                "category": tfds.features.Text(),
            }),
            homepage="https://github.com/shlomif/fortune-mod",
            license="BSD-3-Clause (fortune-mod); notes per file in "
                    "/usr/share/doc/fortunes/copyright",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # No download: the data comes from an OS package.
        splits = read_splits(self._path, log=self._log)
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows):
        for category, text in rows:
            key = fortune_id(text)
            yield key, {"id": key, "text": text, "category": category}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.fortunes",
                                     description="Prints the data card of fortunes.")
    parser.add_argument("--path", default=DEFAULT_PATH,
                        help="the directory of fortune files")
    args = parser.parse_args(argv)
    splits = read_splits(args.path, log=print)
    print(format_data_card(data_card(splits, args.path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
