"""The trans_de_en TFDS builder over the Ding dictionary (Debian trans-de-en)."""

import pytest

from pipeline.datasets.trans_de_en import (
    DEFAULT_PATH,
    SPLITS,
    WORDS_SPLIT,
    TransDeEn,
    count_words,
    data_card,
    format_data_card,
    main,
    pair_alternatives,
    pair_id,
    parse_line,
    parse_short_line,
    read_splits,
)
from pipeline.datasets.wordnet_topics import DataPackageMissing
from pipeline.files import hash_split

QUIET = dict(log=lambda *_: None)
APT_COMMAND = "sudo apt-get install -y --no-install-recommends trans-de-en"

# Counts of /usr/share/trans/de-en of Debian trans-de-en 1.9-6 (Ding devel
# 2023-01-30). A new dictionary version changes them: re-measure with
# `python -m pipeline.datasets.trans_de_en --words` and bump the builder VERSION.
PAIRS = {"train": 31_192, "validation": 4_039, "test": 3_942, WORDS_SPLIT: 254_480}
DISTINCT_DE = {"train": 28_433, "validation": 3_717, "test": 3_575}

# Line 168864 of the file: `|` sub-entries, `;` alternatives, `…`, an annotation.
VERHALTEN = (
    "sich verhalten {vr} (Sache) | Die Sache verhält sich ganz anders. | Die Sache "
    "verhält sich genau umgekehrt.; Es ist genau umgekehrt. | Wenn es sich so "
    "verhält, … | A verhält sich zu B wie C zu D. [math.] :: to be (of a thing) | "
    "The situation is completely different. | The situation is exactly the "
    "reverse.; Exactly the reverse is the case. | If that is the case, … | "
    "A is to B as C is to D.\n")


def test_parse_line_pairs_sub_entries_and_all_alternatives():
    assert parse_line(VERHALTEN) == [
        # "sich verhalten" :: "to be" is too short; then sub-entry i with i.
        ("Die Sache verhält sich ganz anders.", "The situation is completely different."),
        # 2 x 2 alternatives: the diagonal first, then the crossed pairs.
        ("Die Sache verhält sich genau umgekehrt.", "The situation is exactly the reverse."),
        ("Es ist genau umgekehrt.", "Exactly the reverse is the case."),
        ("Die Sache verhält sich genau umgekehrt.", "Exactly the reverse is the case."),
        ("Es ist genau umgekehrt.", "The situation is exactly the reverse."),
        ("Wenn es sich so verhält, …", "If that is the case, …"),
        ("A verhält sich zu B wie C zu D.", "A is to B as C is to D."),
    ]


@pytest.mark.parametrize("line, pairs", [
    # {} [] () <> and standalone /ABBR/ go; "him/her" stays; no space before ".".
    ("Sie haben sich tapfer gehalten. :: They put up a good fight (to hold out).",
     [("Sie haben sich tapfer gehalten.", "They put up a good fight.")]),
    ("Internationales Komitee vom Roten Kreuz /IKRK/ <IKRK> {n} [pol.] :: "
     "International Committee of the Red Cross /ICRC/",
     [("Internationales Komitee vom Roten Kreuz",
       "International Committee of the Red Cross")]),
    ("Ich habe ihn/sie immer wieder vertröstet. :: I kept putting him/her/them off.",
     [("Ich habe ihn/sie immer wieder vertröstet.", "I kept putting him/her/them off.")]),
    # A grammar note's own ";" does not split alternatives; nested brackets go.
    ("auf das Ziel (mit [scharfer] Munition) schießen :: "
     "to shoot {shot; shot} at the target",
     [("auf das Ziel schießen", "to shoot at the target")]),
    # Too short: 3 German words; 4 English words ("…" is not a word).
    ("auf jdn. schießen :: to shoot at sb. and miss", []),
    ("Es ist allgemein bekannt, dass … :: It is known that …", []),
    # Comments, mismatched sub-entry counts, unbalanced brackets, no " :: ".
    ("# Version :: devel 2023-01-30 and some more words here", []),
    ("Er ging nicht darauf ein. | Er ignorierte das völlig. :: "
     "He did not go into it.", []),
    ("Jahrgänge (der Nachkriegszeit aus den Jahren :: 1950 bis 1960) "
     "the baby boom generation of the war", []),
    ("Das ist ein Satz ohne Übersetzung hier", []),
])
def test_parse_line_rules(line, pairs):
    assert parse_line(line) == pairs


def test_pair_alternatives_uses_every_alternative_before_repeating_and_caps():
    pairs = pair_alternatives(["d0", "d1", "d2", "d3"], ["e0", "e1"])
    assert pairs[:4] == [("d0", "e0"), ("d1", "e1"), ("d2", "e0"), ("d3", "e1")]
    assert len(set(pairs)) == 8
    assert pair_alternatives(["d0"], ["e0", "e1", "e2"]) == [
        ("d0", "e0"), ("d0", "e1"), ("d0", "e2")]
    many = pair_alternatives([f"d{i}" for i in range(6)], [f"e{i}" for i in range(6)])
    assert len(many) == 8 and {d for d, _ in many} == {f"d{i}" for i in range(6)}
    assert pair_alternatives([], ["e0"]) == []


def test_count_words_and_short_entries():
    assert count_words("Es ist bekannt, dass …") == 4
    assert parse_line(VERHALTEN, min_de_words=1, min_en_words=1)[0] == (
        "sich verhalten", "to be")
    assert parse_short_line("Aalsuppe {f} [cook.] | Aalsuppen {pl} :: eel soup | eel soups") \
        == [("Aalsuppe", "eel soup"), ("Aalsuppen", "eel soups")]


@pytest.fixture(scope="module")
def real_splits():
    return read_splits(DEFAULT_PATH, words=True)


def test_real_file_counts_are_stable_and_no_german_side_is_in_two_splits(real_splits):
    assert {s: len(p) for s, p in real_splits.items()} == PAIRS
    german = {s: {de for de, _ in real_splits[s]} for s in SPLITS}
    assert {s: len(german[s]) for s in SPLITS} == DISTINCT_DE
    assert not german["train"] & german["validation"]
    assert not german["train"] & german["test"]
    assert not german["validation"] & german["test"]
    for split in SPLITS:
        assert all(hash_split(de) == split for de in german[split])
    every = [pair for pairs in real_splits.values() for pair in pairs]
    assert len(set(every)) == len(every)                      # exact pairs once
    assert len({pair_id(*pair) for pair in every}) == len(every)
    for de, en in real_splits["validation"] + real_splits["test"]:
        assert count_words(de) >= 4 and count_words(en) >= 5
        assert not set("{}[]()<>|;") & set(de + en) and "  " not in de + en


def test_data_card_of_the_real_file(real_splits):
    card = data_card(real_splits)
    train = card["splits"]["train"]
    assert train["pairs"] == PAIRS["train"] and train["distinct_de"] == DISTINCT_DE["train"]
    p50, p90, p99, longest = train["de"]["words_p50_p90_p99_max"]
    assert 4 <= p50 <= p90 <= p99 <= longest
    assert card["splits"][WORDS_SPLIT]["en"]["words_p50_p90_p99_max"][0] <= 2
    text = format_data_card(card)
    assert "31,192 pairs" in text and "28,433 distinct German sides" in text


def test_words_never_come_from_a_line_with_a_held_out_sentence(tmp_path):
    lines = [f"Wort{i} | Das ist Satz Nummer {i}. :: word{i} | This is sentence "
             f"number {i}.\n" for i in range(40)]
    path = tmp_path / "de-en"
    path.write_text("# comment :: line\n" + "".join(lines), encoding="utf-8")
    splits = read_splits(str(path), words=True)
    kept = {i for i in range(40) if hash_split(f"Das ist Satz Nummer {i}.") == "train"}
    assert 0 < len(kept) < 40
    assert splits[WORDS_SPLIT] == [(f"Wort{i}", f"word{i}") for i in sorted(kept)]
    assert sum(len(splits[s]) for s in SPLITS) == 40


def test_cli_prints_the_data_card(tmp_path, capsys):
    path = tmp_path / "de-en"
    path.write_text(VERHALTEN, encoding="utf-8")
    assert main(["--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Data card: trans_de_en" in out
    splits = [line.split()[0] for line in out.splitlines() if line.endswith("sides")]
    assert splits == list(SPLITS)   # no "words" split without --words


def test_missing_file_names_the_apt_command(tmp_path):
    missing = str(tmp_path / "de-en")
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        read_splits(missing)
    builder = TransDeEn(path=missing, data_dir=str(tmp_path), **QUIET)
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        builder.download_and_prepare()


@pytest.mark.slow
def test_tfds_build_by_name_matches_the_parser(tmp_path, real_splits):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    builder = tfds.builder("trans_de_en", data_dir=str(tmp_path), **QUIET)
    assert builder.info.full_name == "trans_de_en/sentences/1.0.0"
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
        s: PAIRS[s] for s in SPLITS}
    german = {}
    for split in SPLITS:
        rows = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        pairs = [(de.decode(), en.decode()) for de, en in zip(rows["de"], rows["en"])]
        assert sorted(pairs) == sorted(real_splits[split])
        assert [i.decode() for i in rows["id"]] == [pair_id(*p) for p in pairs]
        german[split] = {de for de, _ in pairs}
    assert not (german["train"] & german["validation"] or german["train"] & german["test"]
                or german["validation"] & german["test"])
    de, en = next(iter(builder.as_dataset(split="test", as_supervised=True)))
    assert de.dtype.name == "string" and en.dtype.name == "string"
