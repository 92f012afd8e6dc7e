"""TFDS builder `trans_de_en`: German-English sentence pairs from the Ding dictionary.

Reads `/usr/share/trans/de-en` from the Debian package `trans-de-en` (the Ding
dictionary of TU Chemnitz, GPL-2+). A line is `DE | DE2 :: EN | EN2`: the
`|`-separated sub-entries of the two sides correspond one to one, and within a
sub-entry `;` separates alternatives (synonyms, or several phrasings of one
example sentence). `parse_line` turns a line into (de, en) pairs:

  1. `#` lines and lines without ` :: ` give nothing; a line whose sides have
     different numbers of sub-entries gives nothing (the pairing is unknown).
  2. Annotations are removed from each sub-entry before it is split on `;`
     (a grammar note such as `{shot; shot}` holds a `;` of its own): `{f}`,
     `[Br.]`, `(etw.)`, `<abbr>`, nested ones from the inside out, and
     `/ABBR/` abbreviations that stand alone (`cell /ipRGC/`; `him/her` stays).
  3. Text is NFC-normalized, whitespace collapsed, a space left before `. , : ! ?` by a removed
     annotation is dropped, and an alternative with a bracket left over (an
     unbalanced, malformed entry) is dropped.
  4. Alternatives with at least 4 German / 5 English words (tokens holding a
     letter or digit, so a lone `…` is not a word) are kept, and every kept
     German alternative of a sub-entry is paired with every kept English one.
     Long alternatives are synonyms or rephrasings, so each combination is a
     correct translation; at most `MAX_PAIRS_PER_SUB_ENTRY` pairs are taken,
     so no single entry floods the data, in an order that uses every
     alternative of both sides before repeating one (as far as the cap allows).

Exact duplicate (de, en) pairs are kept once. The split of a pair is
`pipeline.files.hash_split` of its German side (the text as stored in `de`),
so a German sentence is never in two splits. `id` is the first 16 hex digits
of the md5 of `de + "\\t" + en`: the same pair keeps its id across runs and
dictionary versions.

The config `sentences_and_words` adds a `words` split of extra training
pairs: one- and two-word entries, the first alternative of each side of a
sub-entry (short `;` lists are sometimes parallel, not synonyms: `A; Ais; As
:: A; A sharp; A flat`), from lines none of whose sentence pairs is in
validation or test.

    import tensorflow_datasets as tfds
    import pipeline.datasets.trans_de_en  # registers the builder
    builder = tfds.builder("trans_de_en", data_dir="artifacts/tensorflow_datasets")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")   # {"id", "de", "en"}

`python -m pipeline.datasets.trans_de_en` prints the data card.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata

import tensorflow_datasets as tfds

from pipeline.datasets.wordnet_topics import require_file
from pipeline.files import hash_split

DEFAULT_PATH = "/usr/share/trans/de-en"
APT_PACKAGE = "trans-de-en"
SPLITS = ("train", "validation", "test")
WORDS_SPLIT = "words"
MIN_DE_WORDS = 4
MIN_EN_WORDS = 5
MAX_PAIRS_PER_SUB_ENTRY = 8
MAX_SHORT_WORDS = 2

_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)|<[^<>]*>")
_ABBREVIATION = re.compile(r"(?<!\S)/[^/\s;](?:[^/;]*[^/\s;])?/(?![^\s.,:;!?])")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,:!?])")
_BRACKET = re.compile(r"[{}\[\]()]")
_WORD = re.compile(r"\S*\w\S*")   # a whitespace token that holds a letter or digit


def strip_annotations(text: str) -> str:
    """Removes `{...}`, `[...]`, `(...)` and `<...>`, innermost first."""
    while True:
        stripped = _ANNOTATION.sub(" ", text)
        if stripped == text:
            return text
        text = stripped


def alternatives(sub_entry: str) -> list[str]:
    """The cleaned `;`-separated alternatives of one sub-entry (rules 2-3)."""
    text = strip_annotations(sub_entry)
    if "/" in text:
        text = _ABBREVIATION.sub(" ", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub("", text)
    result = []
    for alternative in text.split(";"):
        alternative = " ".join(alternative.split())
        if alternative and not _BRACKET.search(alternative):
            result.append(alternative)
    return result


def count_words(text: str) -> int:
    """Whitespace tokens that hold a letter or digit."""
    return len(_WORD.findall(text))


def sub_entries(line: str) -> list[tuple[list[str], list[str]]]:
    """(German alternatives, English alternatives) of each sub-entry of a line;
    [] for a comment, a line without ` :: ` or mismatched sub-entry counts."""
    if line.startswith("#") or " :: " not in line:
        return []
    german, _, english = unicodedata.normalize("NFC", line.strip()).partition(" :: ")
    de_subs, en_subs = german.split("|"), english.split("|")
    if len(de_subs) != len(en_subs):
        return []
    return [(alternatives(de), alternatives(en)) for de, en in zip(de_subs, en_subs)]


def pair_alternatives(de: list[str], en: list[str],
                      limit: int = MAX_PAIRS_PER_SUB_ENTRY) -> list[tuple[str, str]]:
    """Up to `limit` of the combinations of `de` x `en`: first the diagonals
    (i, (i + k) % len(en)) with k = 0, 1, ..., so each alternative appears once
    before any appears twice."""
    if not de or not en:
        return []
    wide, narrow, swap = (de, en, False) if len(de) >= len(en) else (en, de, True)
    pairs = []
    for shift in range(len(narrow)):
        for i, item in enumerate(wide):
            other = narrow[(i + shift) % len(narrow)]
            pairs.append((other, item) if swap else (item, other))
    return pairs[:limit]


def sentence_pairs(entries, min_de_words: int = MIN_DE_WORDS,
                   min_en_words: int = MIN_EN_WORDS) -> list[tuple[str, str]]:
    """Sentence-like (de, en) pairs of a line's `sub_entries` (rule 4)."""
    pairs = []
    for de, en in entries:
        pairs += pair_alternatives([t for t in de if count_words(t) >= min_de_words],
                                   [t for t in en if count_words(t) >= min_en_words])
    return pairs


def short_pairs(entries) -> list[tuple[str, str]]:
    """(de, en) of the first alternatives of the sub-entries where both have 1 to
    `MAX_SHORT_WORDS` words: the dictionary's headword entries."""
    return [(de[0], en[0]) for de, en in entries
            if de and en and all(1 <= count_words(t[0]) <= MAX_SHORT_WORDS
                                 for t in (de, en))]


def parse_line(line: str, min_de_words: int = MIN_DE_WORDS,
               min_en_words: int = MIN_EN_WORDS) -> list[tuple[str, str]]:
    """Sentence-like (de, en) pairs of one dictionary line (rules 1-4); other
    word minimums give the same rules' pairs of other lengths."""
    return sentence_pairs(sub_entries(line), min_de_words, min_en_words)


def parse_short_line(line: str) -> list[tuple[str, str]]:
    """One- and two-word (de, en) pairs of one dictionary line."""
    return short_pairs(sub_entries(line))


def pair_id(de: str, en: str) -> str:
    return hashlib.md5(f"{de}\t{en}".encode()).hexdigest()[:16]


def read_splits(path: str = DEFAULT_PATH, words: bool = False,
                log=None) -> dict[str, list[tuple[str, str]]]:
    """Parses the whole file once: split -> deduplicated (de, en) pairs in file
    order; with `words`, also the `words` split of short training pairs."""
    require_file(path, APT_PACKAGE)
    splits = {s: [] for s in SPLITS + ((WORDS_SPLIT,) if words else ())}
    seen = set()
    progress = None
    if log is not None:
        from pipeline.progress import Progress

        with open(path, "rb") as f:
            total = sum(1 for _ in f)
        progress = Progress("[data]", f"parsing {path}", total, unit="lines", log=log)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if progress:
                progress.update()
            entries = sub_entries(line)
            held_out = False
            for pair in sentence_pairs(entries):
                split = hash_split(pair[0])
                held_out |= split != "train"
                if pair not in seen:
                    seen.add(pair)
                    splits[split].append(pair)
            if words and not held_out:
                for pair in short_pairs(entries):
                    if pair not in seen:
                        seen.add(pair)
                        splits[WORDS_SPLIT].append(pair)
    if progress:
        progress.done()
    return splits


def data_card(splits: dict[str, list[tuple[str, str]]], source: str = DEFAULT_PATH) -> dict:
    """Pairs and distinct German sides per split, length percentiles per side."""
    from pipeline.sources import length_percentiles

    card = {"source": source, "splits": {}}
    for split, pairs in splits.items():
        card["splits"][split] = {
            "pairs": len(pairs),
            "distinct_de": len({de for de, _ in pairs}),
            "de": length_percentiles([de for de, _ in pairs]),
            "en": length_percentiles([en for _, en in pairs]),
        }
    return card


def format_data_card(card: dict) -> str:
    from pipeline.sources import format_lengths

    lines = [f"Data card: trans_de_en ({card['source']})"]
    for split, row in card["splits"].items():
        lines.append(f"  {split:<10} {row['pairs']:>9,} pairs  "
                     f"{row['distinct_de']:>9,} distinct German sides")
        lines += [format_lengths(f"  {side}", row[side]) for side in ("de", "en")]
    return "\n".join(lines)


class TransDeEn(tfds.core.GeneratorBasedBuilder):
    """German-English sentence pairs of the Ding dictionary (Debian trans-de-en)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (Ding de-en from trans-de-en)."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="sentences",
            description="train/validation/test sentence-like pairs."),
        tfds.core.BuilderConfig(
            name="sentences_and_words",
            description="The sentence pairs, plus a 'words' split of one- and "
                        "two-word entries as extra training pairs."),
    ]
    DEFAULT_CONFIG_NAME = "sentences"

    def __init__(self, *, path: str = DEFAULT_PATH, log=print, **kwargs):
        self._path = path
        self._log = log  # progress lines while the file is parsed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "de": tfds.features.Text(),
                "en": tfds.features.Text(),
            }),
            supervised_keys=("de", "en"),
            homepage="https://dict.tu-chemnitz.de/",
            license="GPL-2.0-or-later",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # No download: the data comes from an OS package.
        splits = read_splits(self._path,
                             words=self.builder_config.name == "sentences_and_words",
                             log=self._log)
        return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

    def _generate_examples(self, pairs):
        for de, en in pairs:
            key = pair_id(de, en)
            yield key, {"id": key, "de": de, "en": en}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.trans_de_en",
                                     description="Prints the data card of trans_de_en.")
    parser.add_argument("--path", default=DEFAULT_PATH, help="the Ding de-en file")
    parser.add_argument("--words", action="store_true",
                        help="also count the 'words' split of short entries")
    args = parser.parse_args(argv)
    splits = read_splits(args.path, words=args.words, log=print)
    print(format_data_card(data_card(splits, args.path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
