"""`python -m pipeline.datasets.wordnet_csv verb`: WordNet's verb synsets as a
labelled CSV, the data of configs/csv_pretrained.yaml."""

import collections
import csv
import os
import subprocess
import sys

from tests.conftest import ROOT

DATA_VERB = "/usr/share/wordnet/data.verb"


def test_every_verb_synset_is_one_row_labelled_by_its_lexicographer_file(tmp_path):
    from pipeline.config import load_config
    from pipeline.datasets.wordnet_csv import VERB_LEXNAMES
    from pipeline.sources import load_splits
    from pipeline.tasks.masked_lm import build_corpus

    out = tmp_path / "verbs.csv"
    done = subprocess.run([sys.executable, "-m", "pipeline.datasets.wordnet_csv", "verb",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(DATA_VERB, encoding="utf-8", errors="replace") as f:
        synsets = [line for line in f if not line.startswith("  ")]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert f"wrote {out}: {len(rows):,} rows" in done.stdout
    assert len(rows) == len(synsets) > 13_000
    counts = collections.Counter(r["label"] for r in rows)
    assert set(counts) == set(VERB_LEXNAMES)
    # Shuffled with a fixed seed: the first rows are not one class.
    assert len({r["label"] for r in rows[:500]}) >= 12
    breathe = next(r for r in rows if r["text"].startswith("breathe, take a breath"))
    assert breathe["label"] == "verb.body" and ": draw air into" in breathe["text"]

    cfg = load_config(os.path.join(ROOT, "configs", "csv_pretrained.yaml"),
                      [f"data.train_path={out}"])
    splits = load_splits(cfg.data, str(tmp_path), log=lambda *_: None)
    assert sum(len(t) for t in splits.texts.values()) == len(rows)
    corpus, _ = build_corpus(cfg, splits, log=lambda *_: None)
    held_out = set(splits.texts["validation"]) | set(splits.texts["test"])
    assert len(corpus) > 0.75 * len(rows) and not set(corpus.texts) & held_out


def test_unlabeled_text_holds_the_other_parts_of_speech_and_no_verb_gloss(tmp_path):
    from pipeline.datasets.wordnet_csv import write_csv, write_unlabeled

    out, verbs = tmp_path / "other.txt", tmp_path / "verbs.csv"
    count = write_unlabeled(str(out))
    write_csv(str(verbs))
    lines = out.read_text(encoding="utf-8").splitlines()
    expected = 0
    for name in ("data.noun", "data.adj", "data.adv"):
        with open(f"/usr/share/wordnet/{name}", encoding="utf-8", errors="replace") as f:
            expected += sum(1 for line in f if not line.startswith("  "))
    assert len(lines) == count == expected > 100_000
    with open(verbs, newline="", encoding="utf-8") as f:
        verb_texts = {r["text"] for r in csv.DictReader(f)}
    assert not verb_texts & set(lines)
    assert "entity: that which is perceived or known or inferred" in lines[0]
