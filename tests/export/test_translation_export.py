"""Export of the translation task: the SavedModel (German strings in, English strings out,
tokenization, greedy decoding and detokenization in the graph), the encode/decode TFLite
variants measured with the edge app's greedy loop, the report and the bundle.

The debug run (`translation_run`) barely trains: its translations are nearly the same
string for every sentence. The equivalence tests therefore also run on a randomly
initialised translator, whose outputs differ from sentence to sentence, so that a wrong
token, a dropped id or a mis-tokenized source shows.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import HOSTILE_TEXTS

pytestmark = pytest.mark.slow   # they need the trained and exported debug run

VARIANTS = {"float32", "float16", "dynamic_range"}


def keras_tokens(task, model, texts):
    """The Keras model's greedy ids (the task's own decoding), int32 (n, T)."""
    ids = task.tokenizer(tf.constant(texts))
    return task.greedy(model, {"source_ids": ids, "source_padding_mask": ids != 0})


def translate(saved_model_dir, texts):
    loaded = tf.saved_model.load(saved_model_dir)
    out = loaded.signatures["serving_default"](text=tf.constant(texts, tf.string))
    assert set(out) == {"translation"} and out["translation"].dtype == tf.string
    return [t.decode("utf-8") for t in out["translation"].numpy()]


@pytest.fixture(scope="module")
def random_translator(translation_trained):
    """The debug task with a seeded, untrained translator and its export module.

    Its weight matrices are scaled by 3, so that its greedy translations differ from
    sentence to sentence, and the embedding rows of unk, bos and eos (the tied output
    projection) by 2 more, so that it emits them: eos ends about a third of the rows.
    """
    from export.modules import make_export_module
    from pipeline.tokenizer import BOS_ID, EOS_ID, UNK_ID, set_global_seed

    task, _ = translation_trained
    set_global_seed(7)
    model = task.build_model()
    embeddings = model.encoder.embedding.token_embedding.embeddings
    weights = []
    for variable in model.weights:
        value = variable.numpy() * (3.0 if len(variable.shape) >= 2 else 1.0)
        if variable is embeddings:
            value[[UNK_ID, BOS_ID, EOS_ID]] *= 2.0
        weights.append(value)
    model.set_weights(weights)
    return task, model, make_export_module(task, model)


def test_saved_model_signature_op_check_and_warmup(translation_run):
    from export.check_serving import check_saved_model
    from export.warmup import read_warmup_requests, warmup_path

    cfg, metrics = translation_run
    directory = metrics["artifacts"]["saved_model"]
    assert directory == os.path.join(cfg.run_dir, "serving", "translator", "1")
    signature = tf.saved_model.load(directory).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.name == "text" and spec.dtype == tf.string and spec.shape.as_list() == [None]
    result = check_saved_model(directory)
    assert result.ok, result.error()
    assert {"SentencepieceOp", "SentencepieceTokenizeOp",
            "SentencepieceDetokenizeOp"} <= result.text
    assert "While" in result.core or "StatelessWhile" in result.core
    logs = read_warmup_requests(warmup_path(directory))
    assert len(logs) == 17   # 16 validation sentences alone, then together
    request = logs[-1].predict_log.request
    assert request.model_spec.name == "translator"
    assert request.model_spec.signature_name == "serving_default"
    assert len(request.inputs["text"].string_val) == 16
    assert os.path.isfile(os.path.join(directory, "assets.extra", "spm.model"))


def test_saved_model_translates_any_string(translation_run):
    _, metrics = translation_run
    directory = metrics["artifacts"]["saved_model"]
    texts = HOSTILE_TEXTS + ["Der Hund schläft im Haus.", "ä" * 50_000]   # 100 kB each
    assert len(texts[2].encode()) == len(texts[-1].encode()) == 100_000
    out = translate(directory, texts)
    assert len(out) == len(texts) and all(isinstance(t, str) for t in out)
    assert translate(directory, []) == []


def test_saved_model_equals_keras_greedy_and_detokenize(translation_run, translation_trained):
    _, metrics = translation_run
    task, model = translation_trained
    texts = task.pairs["test"]["de"]
    expected = task.detokenize(keras_tokens(task, model, texts))
    assert translate(metrics["artifacts"]["saved_model"], texts) == expected


def test_random_translator_saved_model_and_tflite_loop_equal_keras(random_translator,
                                                                    tmp_path):
    """With outputs that vary per sentence (and hold unk/bos/eos ids anywhere)."""
    from export.saved_model import export_serving
    from export.tflite import TFLiteModel, export_tflite
    from pipeline.tokenizer import BOS_ID, EOS_ID, UNK_ID

    task, model, module = random_translator
    texts = task.pairs["test"]["de"][:200]
    tokens = keras_tokens(task, model, texts)
    expected = task.detokenize(tokens)
    # Outputs that tell sentences apart, some ended by eos, some with unk or bos inside.
    assert len(set(expected)) > 150
    assert 0.1 < (tokens == EOS_ID).any(axis=1).mean() < 0.9
    assert ((tokens == UNK_ID) | (tokens == BOS_ID)).any(axis=1).sum() >= 5
    directory = export_serving(module, str(tmp_path / "serving"), "translator",
                               log=lambda *_: None)
    assert translate(directory, texts) == expected
    paths = export_tflite(module, ["float32"], str(tmp_path / "edge"), log=lambda *_: None)
    tflite = module.translate_tflite(TFLiteModel(paths["float32"]), module.source_ids(texts))
    same = float(np.mean((tflite == tokens).all(axis=1)))
    print(f"\nrandom translator: float32 TFLite greedy == Keras greedy on {same:.2%} of "
          f"{len(texts)} test sentences")
    assert same >= 0.95


def test_float32_tflite_loop_equals_keras_tokens(translation_run, translation_trained):
    from export.modules import make_export_module
    from export.tflite import TFLiteModel

    cfg, metrics = translation_run
    task, model = translation_trained
    module = make_export_module(task, model)
    ids = module.test_ids()
    assert len(ids) == task.num_examples("test") == 600
    tflite = module.translate_tflite(
        TFLiteModel(os.path.join(cfg.run_dir, "edge", "float32.tflite")), ids)
    keras = keras_tokens(task, model, task.pairs["test"]["de"])
    same = float(np.mean((tflite == keras).all(axis=1)))
    print(f"\ndebug model: float32 TFLite greedy == Keras greedy on {same:.2%} of "
          f"{len(ids)} test sentences")
    assert same >= 0.95
    assert metrics["tflite"]["float32"]["agreement_with_keras"] >= 0.95


def test_variants_report_and_gate(translation_run):
    from tests.models.tflite_test_utils import assert_builtins_only

    cfg, metrics = translation_run
    tflite = metrics["tflite"]
    assert set(tflite) == VARIANTS
    for variant, r in tflite.items():
        with open(r["path"], "rb") as f:
            assert "DYNAMIC_UPDATE_SLICE" in assert_builtins_only(f.read()), variant
        assert 0.0 <= r["bleu"] <= 100.0 and 0.0 <= r["chrf"] <= 100.0, variant
        assert 0.0 <= r["agreement_with_keras"] <= 1.0
        assert r["examples"] == metrics["test"]["examples"] == 600
        assert r["latency_batch1"]["threads_1"]["median_ms"] > 0
    assert tflite["float16"]["size_bytes"] < tflite["float32"]["size_bytes"]
    assert tflite["dynamic_range"]["size_bytes"] < tflite["float32"]["size_bytes"]
    # The float32 variant's BLEU is the Keras model's (same greedy translations).
    assert tflite["float32"]["bleu"] == pytest.approx(metrics["test"]["bleu"], abs=0.05)
    with open(os.path.join(cfg.run_dir, "report", "quantization.json")) as f:
        report = json.load(f)
    assert report["metric"] == "bleu" and report["direction"] == "max"
    assert report["failed"] == {} and set(report["variants"]) == VARIANTS
    assert report["chosen"] in VARIANTS and report["variants"][report["chosen"]]["within_gate"]
    assert "decode steps" in report["latency_unit"]


def test_bundle_manifest(translation_run):
    from export.bundle import sha256

    _, metrics = translation_run
    bundle = metrics["artifacts"]["edge_bundle"]
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["task"] == "translation"
    assert set(manifest["files"]) == {"model.tflite", "spm.model"}
    for name, digest in manifest["files"].items():
        assert sha256(os.path.join(bundle, name)) == digest
    assert manifest["max_source_length"] == manifest["max_target_length"] == 24
    assert (manifest["pad_id"], manifest["bos_id"], manifest["eos_id"]) == (0, 2, 3)
    assert manifest["special_ids"] == [0, 1, 2, 3]
    assert set(manifest["signatures"]) == {"encode", "decode"}
    decode = manifest["signatures"]["decode"]
    assert decode["inputs"]["self_cache"]["shape"] == [1, 1, 2, 24, 2, 16]
    assert manifest["variant"] in VARIANTS and "bleu" in manifest


def test_beam_search_is_measured_beside_greedy(translation_run):
    cfg, metrics = translation_run
    beam = metrics["test"]["beam"]
    assert beam["num_beams"] == cfg.generate.num_beams > 1
    assert 0.0 <= beam["bleu"] <= 100.0 and 0.0 <= beam["chrf"] <= 100.0
    assert all("model_beam" in s for s in metrics["test"]["samples"])


def test_decoding_bench_of_a_translator(translation_run, tmp_path):
    from pipeline.cli import main

    cfg, _ = translation_run
    out = tmp_path / "t.json"
    assert main(["bench", "--generation", "configs/translation_debug.yaml",
                 "--set", f"runtime.artifacts_root={cfg.runtime.artifacts_root}",
                 "--set", f"data.tfds_data_dir={cfg.data.tfds_data_dir}",
                 "--prompts", "3", "--new-tokens", "5", "--repeats", "1",
                 "--out-json", str(out), "--out-md", str(tmp_path / "t.md")]) == 0
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"keras_no_cache", "keras_cache", "saved_model",
                                    *(f"tflite_{v}" for v in VARIANTS)}
    for name, r in report["cases"].items():
        assert r["tokens_per_second"] > 0, name
        if "greedy_ids_equal_reference" in r:
            assert r["greedy_ids_equal_reference"] == 1.0, name


def test_saved_model_check_against_keras_is_in_the_metrics(translation_run):
    _, metrics = translation_run
    check = metrics["saved_model"]
    assert check["sentences"] == metrics["test"]["examples"] == 600
    assert check["greedy_agreement_with_keras"] >= 0.95
