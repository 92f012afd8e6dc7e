"""The fortunes TFDS builder over the fortune cookie files (Debian fortunes)."""

import os
import struct

import pytest

from pipeline.datasets.fortunes import (
    DEFAULT_PATH,
    SPLITS,
    STR_ROTATED,
    Fortunes,
    data_card,
    format_data_card,
    fortune_files,
    fortune_id,
    main,
    parse_entries,
    read_splits,
    resolve_overstrike,
)
from pipeline.datasets.wordnet_topics import DataPackageMissing
from pipeline.files import hash_split

QUIET = dict(log=lambda *_: None)
APT_COMMAND = "sudo apt-get install -y --no-install-recommends fortunes"

# Counts of /usr/share/games/fortunes of Debian fortunes 1:1.99.1-7.3 (with
# fortunes-min). A new package version changes them: re-measure with
# `python -m pipeline.datasets.fortunes` and bump the builder VERSION.
ENTRIES = {"train": 12_171, "validation": 1_463, "test": 1_500}
CATEGORIES = 43

# A fortune file with what the real ones hold: multi-line quotes with tabs,
# trailing blanks, empty entries, a line starting with "%" that is text,
# backspace overstrikes, a duplicate and a last entry without a "%".
BETA = (
    "A one-line quote.\n"
    "%\n"
    "A multi-line quote,   \n"
    "\tindented on its second line.\n"
    "\t\t-- Someone\n"
    "%\n"
    "%\n"
    "\n"
    "   \n"
    "%\n"
    "\n"
    "  Indented first line kept.\n"
    "\n"
    "%\n"
    "%DCL-MEM-BAD, bad memory\n"
    "VMS-F-PANIC, error accessing error message\n"
    "%\n"
    "Ren'\be Descartes and _\bn >= 3\n"
    "%\n"
    "A one-line quote.\n"
    "%\n"
    "Last entry without a separator\n"
)
BETA_ENTRIES = [
    "A one-line quote.",
    "A multi-line quote,\n\tindented on its second line.\n\t\t-- Someone",
    "  Indented first line kept.",
    "%DCL-MEM-BAD, bad memory\nVMS-F-PANIC, error accessing error message",
    "René Descartes and n >= 3",
    "A one-line quote.",
    "Last entry without a separator",
]


def strfile_index(flags: int = 0) -> bytes:
    """The header of a strfile `.dat` index (version 2, one string)."""
    return struct.pack(">5I", 2, 1, 20, 20, flags) + b"%\0\0\0" + bytes(16)


def fortune_dir(tmp_path):
    """`alpha` in latin-1, `beta` with its index and `.u8` symlink, and files
    that must not be read: an `off/` directory, a BSD `-o` file, a file whose
    index says rot13, a binary file."""
    root = tmp_path / "fortunes"
    root.mkdir()
    (root / "alpha").write_bytes("Café au lait.\n%\nA one-line quote.\n%\n".encode("latin-1"))
    (root / "beta").write_text(BETA, encoding="utf-8")
    (root / "beta.dat").write_bytes(strfile_index())
    os.symlink("beta", root / "beta.u8")
    (root / "off").mkdir()
    (root / "off" / "gamma").write_text("Bssrafvir.\n%\n", encoding="utf-8")
    (root / "off" / "gamma.dat").write_bytes(strfile_index(STR_ROTATED))
    (root / "limerick-o").write_text("Bssrafvir gbb.\n%\n", encoding="utf-8")
    (root / "rotated").write_text("Ebg13 grkg.\n%\n", encoding="utf-8")
    (root / "rotated.dat").write_bytes(strfile_index(STR_ROTATED))
    (root / "binary").write_bytes(b"\x00\x01\x02%\n")
    return root


def test_parse_entries_separators_lines_and_empty_entries():
    assert parse_entries(BETA) == BETA_ENTRIES
    assert parse_entries("One.\n%\nTwo.\n%\n") == ["One.", "Two."]  # trailing "%"
    assert parse_entries("One.\n% \n\n%\n%\n") == ["One."]
    assert parse_entries("") == []


@pytest.mark.parametrize("line, shown", [
    ("_\bn >= 3", "n >= 3"),                                   # underline
    ("with what ____\b\b\b\bdoes exist", "with what does exist"),
    ("t _\b_\b_\bhad", "t had"),
    ("I\bI was", "I was"),                                     # bold
    ("Tin'\buviel!", "Tinúviel!"),                             # accents
    ("Plus ,\bca change, plus c'est la m^\beme chose.",
     "Plus ça change, plus c'est la même chose."),
    ("\bx", "x"),
    ("Ask not for whom the <CONTROL-G>\a tolls.", "Ask not for whom the <CONTROL-G>\a tolls."),
])
def test_resolve_overstrike_shows_what_a_terminal_shows(line, shown):
    assert resolve_overstrike(line) == shown


def test_only_text_fortune_files_are_read(tmp_path):
    root = fortune_dir(tmp_path)
    assert fortune_files(str(root)) == [("alpha", str(root / "alpha")),
                                        ("beta", str(root / "beta.u8"))]


def test_read_splits_decodes_deduplicates_and_splits_by_text(tmp_path):
    root = fortune_dir(tmp_path)
    messages = []
    splits = read_splits(str(root), log=messages.append)
    assert messages == [f"[data] {root / 'alpha'}: not UTF-8, read as latin-1"]
    # "A one-line quote." is kept once, in alpha: sorted categories come first.
    expected = [("alpha", "Café au lait."), ("alpha", "A one-line quote.")] + [
        ("beta", text) for text in BETA_ENTRIES[1:5] + BETA_ENTRIES[6:]]
    assert list(splits) == list(SPLITS)
    for split in SPLITS:
        assert splits[split] == [row for row in expected if hash_split(row[1]) == split]
    texts = [text for rows in splits.values() for _, text in rows]
    assert "Bssrafvir." not in texts and "Ebg13 grkg." not in texts


def test_fortune_id_is_stable():
    assert fortune_id("A one-line quote.") == "dc240f0e79259a7d"   # md5, first 16 hex
    assert fortune_id("A one-line quote!") != fortune_id("A one-line quote.")


def test_cli_prints_the_data_card(tmp_path, capsys):
    assert main(["--path", str(fortune_dir(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "read as latin-1" in out and "Data card: fortunes" in out
    assert "2 categories" in out
    assert [line.split()[0] for line in out.splitlines() if "entries" in line] == list(SPLITS)


def test_missing_package_names_the_apt_command(tmp_path):
    missing = str(tmp_path / "fortunes")
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        read_splits(missing)
    builder = Fortunes(path=missing, data_dir=str(tmp_path / "tfds"), **QUIET)
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        builder.download_and_prepare()
    (tmp_path / "empty" / "off").mkdir(parents=True)   # e.g. only fortunes-off
    with pytest.raises(DataPackageMissing, match=APT_COMMAND):
        read_splits(str(tmp_path / "empty"))
    with pytest.raises(NotADirectoryError):
        read_splits(str(fortune_dir(tmp_path) / "beta"))


def test_tfds_builder_writes_and_reads_back_the_parsed_examples(tmp_path):
    import tensorflow_datasets as tfds

    root = tmp_path / "quotes"
    root.mkdir()
    (root / "numbers").write_text("".join(f"Quote number {i}.\n%\n" for i in range(40)),
                                 encoding="utf-8")
    (root / "letters").write_text("A.\n%\nQuote number 7.\n%\nB\n\tand C.\n", encoding="utf-8")
    expected = read_splits(str(root))
    assert all(expected[split] for split in SPLITS)
    tfds.disable_progress_bar()
    builder = Fortunes(path=str(root), data_dir=str(tmp_path / "tfds"), **QUIET)
    assert builder.info.full_name == "fortunes/1.0.0"
    builder.download_and_prepare()
    for split in SPLITS:
        rows = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        got = [(c.decode(), t.decode()) for c, t in zip(rows["category"], rows["text"])]
        assert sorted(got) == sorted(expected[split])
        assert [i.decode() for i in rows["id"]] == [fortune_id(t) for _, t in got]


@pytest.fixture(scope="module")
def real_splits():
    return read_splits(DEFAULT_PATH)


def test_real_package_counts_and_no_text_in_two_splits(real_splits):
    assert {split: len(rows) for split, rows in real_splits.items()} == ENTRIES
    assert all(real_splits[split] for split in SPLITS)
    texts = {split: [text for _, text in rows] for split, rows in real_splits.items()}
    every = [text for split in SPLITS for text in texts[split]]
    assert len(set(every)) == len(every)                  # exact duplicates once
    assert len({fortune_id(text) for text in every}) == len(every)
    for split in SPLITS:
        assert all(hash_split(text) == split for text in texts[split])
    for text in every:
        assert text == text.strip("\n") and "\b" not in text
        assert all(line == line.rstrip() and line != "%" for line in text.split("\n"))
    assert any("Tin\u00faviel" in text for text in every)   # an overstruck accent


def test_data_card_of_the_real_package(real_splits):
    card = data_card(real_splits)
    assert {s: row["entries"] for s, row in card["splits"].items()} == ENTRIES
    assert len(card["categories"]) == CATEGORIES and "off" not in card["categories"]
    for split in SPLITS:
        assert sum(row[split] for row in card["categories"].values()) == ENTRIES[split]
    p50, p95, longest = card["splits"]["train"]["chars_p50_p95_max"]
    assert 0 < p50 <= p95 <= longest
    assert card["splits"]["train"]["lines_p50_p95_max"][0] >= 1
    text = format_data_card(card)
    assert f"{ENTRIES['train']:,} entries" in text and f"{CATEGORIES} categories" in text


@pytest.mark.slow
def test_tfds_build_by_name_of_the_real_package(tmp_path, real_splits):
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    builder = tfds.builder("fortunes", data_dir=str(tmp_path), **QUIET)
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == ENTRIES
    for split in SPLITS:
        rows = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        got = [(c.decode(), t.decode()) for c, t in zip(rows["category"], rows["text"])]
        assert sorted(got) == sorted(real_splits[split])
