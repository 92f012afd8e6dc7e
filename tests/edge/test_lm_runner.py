"""The edge app on a language-model bundle: numpy sampling, the prefill/decode loop (also
what export measures every TFLite variant with), teacher-forced scoring, and the app
streaming a generation from the bundle of the LM debug run without TensorFlow, with a seed
that gives the same text twice."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.edge.app_helpers import app, run_app, run_blocked

lm = importlib.import_module("runners.language_modeling")

CACHE_SHAPE = (1, 1, 2, 8, 1, 2)
BOS, EOS = 2, 3
PROMPTS = ["The secret of", "", "Never", "ä" * 50_000, "Ärger über Öl — 日本語 🙂"]


class ScriptedSignatures:
    """Fake `prefill`/`decode`: the logits after position p point at `script[p]`; the cache
    holds p + 1 at each position written, and every call is recorded."""

    def __init__(self, script, prefill_length=5):
        self.script, self.calls, self.prefill_length = list(script), [], prefill_length

    def logits(self, position):
        out = np.zeros((1, 10), np.float32)
        out[0, self.script[position]] = 4.0
        return out

    def prefill(self, token_ids, length):
        assert token_ids.dtype == np.int32 and token_ids.shape == (1, self.prefill_length)
        assert length.dtype == np.int32 and length.shape == ()
        self.calls.append(("prefill", token_ids.copy(), int(length)))
        cache = np.zeros(CACHE_SHAPE, np.float32)
        cache[:, :, :, : int(length)] = 1.0
        return {"logits": self.logits(int(length) - 1), "cache": cache}

    def decode(self, token_ids, index, cache):
        assert token_ids.shape == (1, 1) and index.shape == () and cache.shape == CACHE_SHAPE
        assert (cache[:, :, :, : int(index)] > 0).all()   # the cache comes back
        self.calls.append(("decode", int(token_ids[0, 0]), int(index)))
        cache = cache.copy()
        cache[:, :, :, int(index)] = 1.0
        return {"logits": self.logits(int(index)), "cache": cache}


def greedy(logits):
    return int(np.argmax(logits))


def test_loop_prefills_once_then_decodes_each_id_at_its_position():
    fake = ScriptedSignatures([9, 7, 8, EOS, 5, 5, 5, 5])
    ids = list(lm.generate_tokens(fake.prefill, fake.decode, [BOS, 6], 5, 10, EOS, greedy, 8))
    assert ids == [7, 8, EOS]
    kind, token_ids, length = fake.calls[0]
    assert kind == "prefill" and length == 2
    np.testing.assert_array_equal(token_ids, [[BOS, 6, 0, 0, 0]])
    assert fake.calls[1:] == [("decode", 7, 2), ("decode", 8, 3)]


def test_loop_stops_at_max_new_tokens_and_at_the_cache_end():
    fake = ScriptedSignatures([4] * 8)
    assert list(lm.generate_tokens(fake.prefill, fake.decode, [BOS], 5, 3, EOS, greedy,
                                   8)) == [4, 4, 4]
    fake = ScriptedSignatures([4] * 8)
    ids = list(lm.generate_tokens(fake.prefill, fake.decode, [BOS, 5, 5], 5, 100, EOS,
                                  greedy, 8))
    assert len(ids) == 8 - 3                # ids at positions 3..7 of an 8-long cache
    assert fake.calls[-1] == ("decode", 4, 6)   # the id at 7 is never fed back
    with pytest.raises(ValueError, match="prefill takes 1 to 5"):
        list(lm.generate_tokens(fake.prefill, fake.decode, [BOS] * 6, 5, 3, EOS, greedy, 8))


def test_score_is_the_teacher_forced_log_likelihood():
    fake = ScriptedSignatures([6, 7, 3, 3, 3, 3, 3, 3])
    nll, count = lm.score_tokens(fake.prefill, fake.decode, [BOS, 6, 7, EOS], 5)
    assert count == 3
    hit = -lm.log_softmax(np.array([4.0] + [0.0] * 9))[0]
    assert nll == pytest.approx(3 * hit)
    assert [c[0] for c in fake.calls] == ["prefill", "decode", "decode"]
    assert fake.calls[1:] == [("decode", 6, 1), ("decode", 7, 2)]


def test_sampling_strategies():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    assert lm.sample_next(logits, None, "greedy") == 0
    assert lm.sample_next(logits, rng, "random", temperature=0.0) == 0
    draws = {lm.sample_next(logits, rng, "top_k", 1.0, top_k=2) for _ in range(300)}
    assert draws == {0, 1}
    draws = {lm.sample_next(logits, rng, "top_p", 1.0, top_p=0.7) for _ in range(300)}
    assert draws == {0, 1}                  # 0.5 < 0.7 <= 0.5 + 0.3
    counts = np.bincount([lm.sample_next(logits, rng, "random") for _ in range(4000)],
                         minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    hot = np.bincount([lm.sample_next(logits, rng, "random", 0.3) for _ in range(2000)],
                      minlength=4) / 2000
    assert hot[0] > 0.8                     # a low temperature sharpens
    runs = [[lm.sample_next(logits, rng, "random") for _ in range(20)]
            for rng in (np.random.default_rng(7), np.random.default_rng(7))]
    assert runs[0] == runs[1]


# --------------------------------------------------------------- the debug run's bundle


@pytest.fixture(scope="module")
def bundle_dir(lm_run) -> Path:
    return Path(lm_run[1]["artifacts"]["edge_bundle"])


@pytest.mark.slow
def test_runner_greedy_equals_the_export_loop_and_seeds_repeat(bundle_dir, lm_trained):
    from export.modules import make_export_module
    from export.tflite import TFLiteModel

    task, model = lm_trained
    module = make_export_module(task, model)
    tflite = TFLiteModel(str(bundle_dir / "model.tflite"))
    runner = app.load_bundle(bundle_dir, num_threads=1)
    assert type(runner) is app.LanguageModelRunner
    for prompt in PROMPTS:
        ids = runner.tokenize(prompt)
        assert ids == module.prompt_ids(prompt)           # the SavedModel's prompt ids
        result = runner.run(prompt, strategy="greedy", max_new_tokens=12)
        assert result["token_ids"] == module.greedy_tflite(tflite, ids, 12)
    first = runner.run("The secret of", strategy="top_k", temperature=1.0, seed=3)
    again = runner.run("The secret of", strategy="top_k", temperature=1.0, seed=3)
    other = [runner.run("The secret of", strategy="top_k", temperature=1.0, seed=s)
             for s in range(4, 8)]
    assert first["token_ids"] == again["token_ids"]
    assert any(o["token_ids"] != first["token_ids"] for o in other)
    assert first["generated_text"].startswith("The secret of")
    assert first["time_to_first_token_ms"] > 0


@pytest.mark.slow
def test_app_streams_without_tensorflow(bundle_dir, tmp_path):
    args = ["--bundle", bundle_dir, "--seed", "5", "--sampling", "top_k",
            "--temperature", "1.0", "--max-new-tokens", "10"]
    proc = run_blocked(["tensorflow", "keras", "tf_keras"], [*args, "The secret of"])
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY_MODULES=\n" in proc.stderr
    assert proc.stdout.startswith("The secret of")
    assert "tokens/s]" in proc.stderr and "first after" in proc.stderr
    again = run_app(*args, "The secret of")
    assert again.stdout == proc.stdout          # the same seed, the same text
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in PROMPTS),
                   encoding="utf-8")
    proc = run_app(*args, "--jsonl", src)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in results] == PROMPTS
    assert all(len(r["token_ids"]) <= 10 and r["tokens_per_second"] >= 0 for r in results)
    bad = run_app("--bundle", bundle_dir, "--sampling", "beam", "x")
    assert bad.returncode == 2 and "--sampling" in bad.stderr


@pytest.mark.slow
def test_clean_venv_streams_the_lm_bundle(bundle_dir, edge_venv):
    args = ["--bundle", bundle_dir, "--seed", "5", "--max-new-tokens", "10", "Never"]
    proc = run_app(*args, python=edge_venv, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Never") and "tokens/s]" in proc.stderr
    assert run_app(*args).stdout == proc.stdout
