"""TFDS builder `wordnet_topics`: WordNet noun glosses labelled by topic.

Reads `/usr/share/wordnet/data.noun` from the Debian package `wordnet-base`
(82,115 noun synsets). Each example is one synset:

  id          the synset offset (a stable 8-digit string)
  lemmas      the synset's words, underscores as spaces, joined by ", "
  definition  the whole gloss: the definition and any quoted usage examples
  label       the lexicographer file, 26 classes (noun.Tops ... noun.time)

Splits are deterministic: md5 of the synset offset, modulo 100, puts an
example in train (< 80), validation (< 90) or test.
"""

from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

DEFAULT_PATH = "/usr/share/wordnet/data.noun"
APT_PACKAGE = "wordnet-base"

# WordNet 3.0 lexnames, ids 03..28 (the noun lexicographer files).
NOUN_LEXNAMES = [
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time",
]
FIRST_NOUN_LEXFILE = 3


class DataPackageMissing(FileNotFoundError):
    """The OS package that provides a data set is not installed."""


def require_file(path: str, package: str = APT_PACKAGE) -> None:
    if not os.path.isfile(path):
        raise DataPackageMissing(
            f"{path} not found: install the Debian package '{package}' with\n"
            f"    sudo apt-get install -y --no-install-recommends {package}\n"
            f"(or run 'make quickstart', which installs it).")


def split_of(synset_offset: str) -> str:
    """Stable split assignment by the md5 of the synset offset
    (`pipeline.files.hash_split`, the one split rule of every source)."""
    from pipeline.files import hash_split

    return hash_split(synset_offset)


def parse_line(line: str) -> dict | None:
    """Parses one data.noun line; None for the licence header."""
    if not line or line.startswith("  "):
        return None
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    offset, lex_filenum = fields[0], int(fields[1])
    word_count = int(fields[3], 16)
    words = fields[4:4 + 2 * word_count:2]
    return {
        "id": offset,
        "lemmas": ", ".join(w.replace("_", " ") for w in words),
        "definition": gloss.strip(),
        "label": NOUN_LEXNAMES[lex_filenum - FIRST_NOUN_LEXFILE],
    }


def read_parsed(path: str, parse=None, error=ValueError):
    """Yields `parse(line)` of every synset line of a WordNet data.* file
    (`parse_line` by default); `error` names the file and line of a bad one."""
    parse = parse or parse_line
    require_file(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                row = parse(line.rstrip("\n"))
            except (ValueError, IndexError) as err:
                raise error(f"{path}:{number}: malformed synset line: {err}") from None
            if row is not None:
                yield row


_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


def parse_gloss_line(line: str) -> tuple[str, list[str], str] | None:
    """(offset, lemmas, gloss) of one WordNet data.* line; None for the header."""
    if not line or line.startswith("  ") or " | " not in line:
        return None
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    word_count = int(fields[3], 16)
    words = [_ADJ_MARKER.sub("", w).replace("_", " ")
             for w in fields[4:4 + 2 * word_count:2]]
    return fields[0], words, gloss.strip()



def read_synsets(path: str = DEFAULT_PATH):
    """Yields parsed synsets of a WordNet data.noun file."""
    yield from read_parsed(path)


class WordnetTopics(tfds.core.GeneratorBasedBuilder):
    """WordNet noun glosses labelled with their lexicographer category."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (WordNet 3.0 from wordnet-base)."}

    def __init__(self, *, wordnet_path: str = DEFAULT_PATH, log=print, **kwargs):
        self._wordnet_path = wordnet_path
        self._log = log  # progress lines while the splits are generated
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "lemmas": tfds.features.Text(),
                "definition": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=NOUN_LEXNAMES),
            }),
            supervised_keys=("definition", "label"),
            homepage="https://wordnet.princeton.edu/",
            license="WordNet 3.0 license (BSD-like)",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # No download: the data comes from an OS package.
        require_file(self._wordnet_path)
        return {
            split: self._generate_examples(split)
            for split in ("train", "validation", "test")
        }

    def _generate_examples(self, split: str):
        from pipeline.progress import Progress

        with open(self._wordnet_path, encoding="utf-8", errors="replace") as f:
            total = sum(1 for line in f if line.strip() and not line.startswith("  "))
        progress = Progress("[data]", f"generating {split}", total, unit="synsets",
                            log=self._log)
        for row in read_synsets(self._wordnet_path):
            progress.update()
            if split_of(row["id"]) == split:
                yield row["id"], row
