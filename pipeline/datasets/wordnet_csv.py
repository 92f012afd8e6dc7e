"""`python -m pipeline.datasets.wordnet_csv verb out.csv`: a labelled CSV of a
WordNet part of speech (from the Debian package wordnet-base), to try the
CSV source and pre-training on a task's own text with data that installs here;
`... unlabeled out.txt`: the other parts of speech as unlabeled text.

Each row is one synset: `text` = "lemmas: gloss" (the task's text form),
`label` = its lexicographer file (verb: 15 classes, verb.body ... verb.weather).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys

from pipeline.datasets.wordnet_topics import parse_gloss_line, read_parsed
from pipeline.files import atomic_path

WORDNET_DIR = "/usr/share/wordnet"
# WordNet 3.0 lexnames 29..43: the verb lexicographer files.
VERB_LEXNAMES = [
    "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather",
]
FIRST_VERB_LEXFILE = 29


def parse_verb_line(line: str) -> tuple[str, str] | None:
    """(text, label) of one data.verb line; None for the licence header."""
    row = parse_gloss_line(line)
    if row is None:
        return None
    _, lemmas, gloss = row
    lexfile = int(line.split(maxsplit=2)[1])
    return f"{', '.join(lemmas)}: {gloss}", VERB_LEXNAMES[lexfile - FIRST_VERB_LEXFILE]


def write_csv(path: str, wordnet_dir: str = WORDNET_DIR, seed: int = 0) -> int:
    """Writes text,label rows of every verb synset in a seeded random order
    (data.verb groups synsets by class, which the first N rows of a file
    should not); returns the row count."""
    rows = list(read_parsed(os.path.join(wordnet_dir, "data.verb"), parse_verb_line))
    random.Random(seed).shuffle(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return len(rows)


UNLABELED_FILES = ("data.noun", "data.adj", "data.adv")


def write_unlabeled(path: str, wordnet_dir: str = WORDNET_DIR) -> int:
    """Writes the "lemmas: gloss" text of every noun, adjective and adverb
    synset, one per line: unlabeled text for pre-training a verb task (no
    verb gloss in it); returns the line count."""
    lines = []
    for name in UNLABELED_FILES:
        for _, lemmas, gloss in read_parsed(os.path.join(wordnet_dir, name),
                                            parse_gloss_line):
            lines.append(f"{', '.join(lemmas)}: {gloss}".replace("\n", " "))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    return len(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets.wordnet_csv",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["verb", "unlabeled"],
                        help="verb: the labelled verb CSV; unlabeled: noun, adjective "
                        "and adverb glosses as a text file (a line each)")
    parser.add_argument("out", help="file to write")
    args = parser.parse_args(argv)
    if args.kind == "verb":
        print(f"wrote {args.out}: {write_csv(args.out):,} rows")
    else:
        print(f"wrote {args.out}: {write_unlabeled(args.out):,} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
