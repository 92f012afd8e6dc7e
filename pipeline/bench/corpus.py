"""A labelled CSV corpus of any size, made from WordNet (Debian wordnet-base),
for trying the pipeline on data larger than memory.

    python -m pipeline.bench.corpus OUT_DIR --rows 4000000 [--eval-rows 2000]

writes OUT_DIR/train.csv (`--rows` rows), OUT_DIR/validation.csv and
OUT_DIR/test.csv (`--eval-rows` each), columns `text,label`. Row i is the
gloss of noun synset i mod 82,115 with its lemmas and a unique tag
"(item i)", labelled with the synset's lexicographer file, so every text is
distinct and the task is the default one's. Validation and test rows come
from the synsets of the default task's own validation and test splits, so
no gloss of them is in train.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from pipeline.datasets.wordnet_topics import DEFAULT_PATH, read_synsets, split_of
from pipeline.files import atomic_path


def write_corpus(out_dir: str, rows: int, eval_rows: int = 2000,
                 wordnet_path: str = DEFAULT_PATH) -> dict[str, str]:
    """Writes the three files atomically; returns split -> path."""
    by_split = {"train": [], "validation": [], "test": []}
    for synset in read_synsets(wordnet_path):
        by_split[split_of(synset["id"])].append(
            (f"{synset['lemmas']}: {synset['definition']}", synset["label"]))
    counts = {"train": rows, "validation": eval_rows, "test": eval_rows}
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    for split, n in counts.items():
        source = by_split[split]
        paths[split] = os.path.join(out_dir, f"{split}.csv")
        with atomic_path(paths[split]) as tmp, open(tmp, "w", newline="",
                                                    encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                text, label = source[i % len(source)]
                writer.writerow([f"{text} (item {i})", label])
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.corpus",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--rows", type=int, required=True, help="rows of train.csv")
    parser.add_argument("--eval-rows", type=int, default=2000,
                        help="rows of validation.csv and test.csv (default 2000)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.eval_rows < 1:
        parser.error("--rows and --eval-rows must be at least 1")
    paths = write_corpus(args.out_dir, args.rows, args.eval_rows)
    for split, path in paths.items():
        print(f"{split}: {path} ({os.path.getsize(path) / 1e6:,.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
