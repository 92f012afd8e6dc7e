"""The edge app on a translation bundle: the shared numpy greedy loop over the `encode` and
`decode` signatures (also what export measures every TFLite variant with), detokenization,
and the app run from the bundle of the translation debug run without TensorFlow."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.edge.app_helpers import app, run_app, run_blocked

# The runner module as the app imports it (edge/ on sys.path: app_helpers loaded the app).
translation = importlib.import_module("runners.translation")

CACHE_SHAPE = (1, 1, 2, 6, 1, 2)
BOS, EOS = 2, 3
SENTENCES = ["Der Hund schläft im Haus.", "Ich habe keine Zeit für so etwas.", "",
             "ä" * 50_000, "Ärger über Öl — 日本語 🙂"]


class ScriptedSignatures:
    """Fake `encode`/`decode` signatures: decode emits `script[index]` and writes index + 1
    into its cache at `index`, recording what it was fed."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def encode(self, source_ids, source_padding_mask):
        self.source = (source_ids.copy(), source_padding_mask.copy())
        return {"cross_cache": np.full((1, 1, 2, source_ids.shape[1], 1, 2), 7.0, np.float32)}

    def decode(self, token_ids, index, self_cache, cross_cache, source_padding_mask):
        assert token_ids.dtype == np.int32 and token_ids.shape == (1, 1)
        assert index.dtype == np.int32 and index.shape == ()
        assert self_cache.dtype == np.float32 and self_cache.shape == CACHE_SHAPE
        assert (cross_cache == 7.0).all()
        self.calls.append((int(token_ids[0, 0]), int(index), self_cache.copy()))
        cache = self_cache.copy()
        cache[:, :, :, int(index)] = int(index) + 1
        logits = np.zeros((1, 10), np.float32)
        logits[0, self.script[int(index)]] = 1.0
        return {"logits": logits, "self_cache": cache}


def run_script(script, max_length=6):
    fake = ScriptedSignatures(script)
    source = np.array([5, 6, 0, 0], np.int32)
    tokens = translation.greedy_decode(fake.encode, fake.decode, source, CACHE_SHAPE, BOS, EOS,
                               max_length)
    return tokens, fake


def test_greedy_loop_feeds_back_tokens_and_cache_and_stops_at_eos():
    tokens, fake = run_script([7, 8, EOS, 9, 9, 9])
    assert tokens.dtype == np.int32 and list(tokens) == [7, 8, EOS]
    np.testing.assert_array_equal(fake.source[0], [[5, 6, 0, 0]])
    np.testing.assert_array_equal(fake.source[1], [[1, 1, 0, 0]])
    assert [(token, index) for token, index, _ in fake.calls] == [(BOS, 0), (7, 1), (8, 2)]
    for index, (_, _, cache) in enumerate(fake.calls):   # the cache returned the step before
        written = cache[0, 0, 0, :, 0, 0]
        np.testing.assert_array_equal(written, [i + 1 if i < index else 0 for i in range(6)])


def test_greedy_loop_stops_at_max_length():
    tokens, fake = run_script([4, 5, 6, 7, 8, 9])
    assert list(tokens) == [4, 5, 6, 7, 8, 9] and len(fake.calls) == 6
    tokens, fake = run_script([4, 5, 6, 7, 8, 9], max_length=2)
    assert list(tokens) == [4, 5] and len(fake.calls) == 2


def test_detokenize_cuts_at_eos_and_drops_special_ids():
    class Processor:
        def decode(self, ids):
            return ",".join(map(str, ids))

    assert app.runner_class("translation") is app.TranslationRunner
    detokenize = translation.detokenize
    assert detokenize(Processor(), [5, 1, 2, 6, 0, 3, 7, 8], EOS, (0, 1, 2, 3)) == "5,6"
    assert detokenize(Processor(), [3, 5], EOS, (0, 1, 2, 3)) == ""
    assert detokenize(Processor(), [], EOS, (0, 1, 2, 3)) == ""


def test_export_measures_variants_with_the_edge_loop(monkeypatch):
    """One greedy loop: export's TFLite evaluation runs the edge runner's function."""
    import types

    import edge.runners.translation as edge_translation
    from export.modules import get_export_module_class

    fake = ScriptedSignatures([7, EOS, 9, 9, 9, 9])
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return edge_translation_loop(*args, **kwargs)

    edge_translation_loop = edge_translation.greedy_decode
    monkeypatch.setattr(edge_translation, "greedy_decode", spy)

    class FakeTFLiteModel:   # export.tflite.TFLiteModel's interface
        def __call__(self, signature, **inputs):
            return getattr(fake, signature)(**inputs)

        def signature(self, name):
            return types.SimpleNamespace(get_input_details=lambda: {
                "self_cache": {"shape": np.array(CACHE_SHAPE)}})

    export_class = get_export_module_class("translation")
    module = types.SimpleNamespace(max_target_length=6)
    tokens = export_class.greedy_tflite(module, FakeTFLiteModel(),
                                        np.array([5, 6, 0, 0], np.int32))
    assert list(tokens) == [7, EOS] and len(calls) == 1
    rows = export_class.translate_tflite(
        types.SimpleNamespace(max_target_length=6,
                              greedy_tflite=lambda m, ids: np.array([7, EOS], np.int32)),
        None, np.zeros((2, 4), np.int32))
    np.testing.assert_array_equal(rows, [[7, EOS, 0, 0, 0, 0]] * 2)


# --------------------------------------------------------------- the debug run's bundle


@pytest.fixture(scope="module")
def bundle_dir(translation_run) -> Path:
    return Path(translation_run[1]["artifacts"]["edge_bundle"])


@pytest.fixture(scope="module")
def expected(translation_trained, bundle_dir):
    """Export's view of the bundled model: its greedy ids (the export module's TFLite
    evaluation path) detokenized by the task, for SENTENCES."""
    from export.modules import make_export_module
    from export.tflite import TFLiteModel

    task, model = translation_trained
    module = make_export_module(task, model)
    tflite = TFLiteModel(str(bundle_dir / "model.tflite"))
    tokens = module.translate_tflite(tflite, module.source_ids(SENTENCES))
    return {"translations": task.detokenize(tokens),
            "token_ids": [[int(i) for i in row[: np.count_nonzero(row)]] for row in tokens]}


@pytest.mark.slow
def test_app_translates_from_the_bundle_without_tensorflow(bundle_dir, expected, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in SENTENCES),
                   encoding="utf-8")
    proc = run_blocked(["tensorflow", "keras", "tf_keras"],
                       ["--bundle", bundle_dir, "--jsonl", src])
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY_MODULES=\n" in proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in results] == SENTENCES
    assert [r["translation"] for r in results] == expected["translations"]
    assert [r["token_ids"] for r in results] == expected["token_ids"]
    assert all(r["latency_ms"] > 0 for r in results)
    # plain output: translation, latency, source preview
    proc = run_app("--bundle", bundle_dir, SENTENCES[0])
    assert proc.returncode == 0, proc.stderr
    translation, latency, preview = proc.stdout.rstrip("\n").split("\t")
    assert translation == expected["translations"][0] and float(latency) > 0
    assert preview == SENTENCES[0] and "count=1" in proc.stderr


@pytest.mark.slow
def test_runner_library_api(bundle_dir, expected):
    runner = app.load_bundle(bundle_dir, num_threads=1)
    assert type(runner) is app.TranslationRunner
    assert runner.max_source_length == runner.max_target_length == 24
    ids = runner.tokenize(SENTENCES[0])
    assert ids.dtype == np.int32 and ids.shape == (24,)
    results = runner.translate(SENTENCES)
    assert [r["translation"] for r in results] == expected["translations"]
    assert runner.stats()["count"] == len(SENTENCES)


@pytest.mark.slow
def test_bundle_with_wrong_lengths_is_refused(bundle_dir, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    manifest = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
    manifest["max_source_length"] = 16
    (b / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(app.BundleError, match="max_source_length=16"):
        app.load_bundle(b)


@pytest.mark.slow
def test_clean_venv_runs_the_translation_bundle(bundle_dir, expected, edge_venv, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in SENTENCES),
                   encoding="utf-8")
    proc = run_app("--bundle", bundle_dir, "--jsonl", src, python=edge_venv, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["translation"] for r in results] == expected["translations"]
    assert [r["token_ids"] for r in results] == expected["token_ids"]


@pytest.mark.slow
def test_beam_search_from_the_cli(bundle_dir, translation_trained):
    """--beams N runs the numpy beam search over the bundle: one beam is greedy; the
    manifest carries the config's length penalty; a bad value is a usage error."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    task, _ = translation_trained
    assert manifest["num_beams"] == task.cfg.generate.num_beams
    assert manifest["length_penalty"] == task.cfg.generate.length_penalty
    greedy = run_app("--bundle", bundle_dir, "--json", *SENTENCES[:2])
    one = run_app("--bundle", bundle_dir, "--json", "--beams", "1", *SENTENCES[:2])
    three = run_app("--bundle", bundle_dir, "--json", "--beams", "3", *SENTENCES[:2])
    assert greedy.returncode == one.returncode == three.returncode == 0, three.stderr
    ids = [[json.loads(line)["token_ids"] for line in p.stdout.splitlines()]
           for p in (greedy, one, three)]
    assert ids[0] == ids[1] and len(ids[2]) == 2
    bad = run_app("--bundle", bundle_dir, "--beams", "0", "x")
    assert bad.returncode == 2 and "--beams" in bad.stderr
