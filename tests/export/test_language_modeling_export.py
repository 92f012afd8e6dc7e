"""Export of the language-modeling task: the SavedModel (prompts in, generated text out,
with max_new_tokens / temperature / top_k / top_p / seed as inputs of `generate` and the
config's defaults in `serving_default`), the prefill/decode TFLite variants measured with
the edge app's loops, the report, the bundle, and the local server generating through it.

The debug run barely trains, so its greedy continuations are nearly the same for every
prompt. The equivalence tests also run on a randomly initialised model whose weights are
scaled up, so that its continuations differ from prompt to prompt and a wrong id, a
dropped cache entry or a mis-tokenized prompt shows.
"""

import json
import os

import pytest
import tensorflow as tf

from tests.conftest import HOSTILE_TEXTS

pytestmark = pytest.mark.slow   # they need the trained and exported debug run

VARIANTS = {"float32", "float16", "dynamic_range"}
PROMPTS = ["", "The secret of", "A computer is", "Never", "ä" * 50_000,
           "Ärger über Öl — 日本語 🙂"]


def call_generate(directory, prompts, max_new_tokens=12, temperature=0.0, top_k=0,
                  top_p=1.0, seed=0):
    loaded = tf.saved_model.load(directory)
    out = loaded.signatures["generate"](
        prompt=tf.constant(prompts, tf.string), max_new_tokens=tf.constant(max_new_tokens),
        temperature=tf.constant(float(temperature)), top_k=tf.constant(top_k),
        top_p=tf.constant(float(top_p)), seed=tf.constant(seed))
    return {k: v.numpy() for k, v in out.items()}


def generated_ids(out):
    return [list(map(int, row[:n])) for row, n in zip(out["token_ids"], out["num_tokens"])]


@pytest.fixture(scope="module")
def random_lm(lm_trained):
    """The debug task with a seeded, untrained model (weights x3) and its export module."""
    from export.modules import make_export_module
    from pipeline.tokenizer import set_global_seed

    task, _ = lm_trained
    set_global_seed(11)
    model = task.build_model()
    model.set_weights([w.numpy() * (3.0 if len(w.shape) >= 2 else 1.0)
                       for w in model.weights])
    return task, model, make_export_module(task, model)


@pytest.fixture(scope="module")
def random_export(random_lm, tmp_path_factory):
    """The random model's SavedModel and float32 TFLite file."""
    from export.saved_model import export_serving
    from export.tflite import export_tflite

    task, model, module = random_lm
    root = tmp_path_factory.mktemp("random_lm")
    saved = export_serving(module, str(root / "serving"), "language_model",
                           log=lambda *_: None)
    paths = export_tflite(module, ["float32"], str(root / "edge"), log=lambda *_: None)
    return saved, paths["float32"]


def test_saved_model_signatures_op_check_and_warmup(lm_run):
    from export.check_serving import check_saved_model
    from export.warmup import read_warmup_requests, warmup_path

    cfg, metrics = lm_run
    directory = metrics["artifacts"]["saved_model"]
    assert directory == os.path.join(cfg.run_dir, "serving", "language_model", "1")
    signatures = tf.saved_model.load(directory).signatures
    assert set(signatures) == {"serving_default", "generate"}
    (spec,) = signatures["serving_default"].structured_input_signature[1].values()
    assert spec.name == "prompt" and spec.dtype == tf.string
    inputs = signatures["generate"].structured_input_signature[1]
    assert {k: v.dtype for k, v in inputs.items()} == {
        "prompt": tf.string, "max_new_tokens": tf.int32, "temperature": tf.float32,
        "top_k": tf.int32, "top_p": tf.float32, "seed": tf.int32}
    result = check_saved_model(directory)
    assert result.ok, result.error()
    assert {"SentencepieceTokenizeOp", "SentencepieceDetokenizeOp"} <= result.text
    logs = read_warmup_requests(warmup_path(directory))
    assert len(logs) == 9   # 8 validation prompts alone, then together
    assert logs[-1].predict_log.request.model_spec.signature_name == "serving_default"


def test_saved_model_generates_from_any_string_within_the_limits(lm_run):
    from pipeline.tokenizer import EOS_ID

    cfg, metrics = lm_run
    directory = metrics["artifacts"]["saved_model"]
    texts = HOSTILE_TEXTS + PROMPTS
    out = call_generate(directory, texts, max_new_tokens=7)
    assert out["text"].shape == out["completion"].shape == (len(texts),)
    assert all(0 <= n <= 7 for n in out["num_tokens"])
    assert all(EOS_ID not in row for row in generated_ids(out))
    # The text is the prompt (as the tokenizer reads it) and then the completion.
    text = out["text"][PROMPTS.index("Never") + len(HOSTILE_TEXTS)].decode()
    assert text.startswith("Never")
    # max_new_tokens past the sequence length is clipped, not an error.
    out = call_generate(directory, ["Never"], max_new_tokens=10_000)
    assert out["num_tokens"][0] <= cfg.model.max_sequence_length - 2
    defaults = tf.saved_model.load(directory).signatures["serving_default"](
        prompt=tf.constant(["The secret of"]))
    assert int(defaults["num_tokens"][0]) <= cfg.generate.max_new_tokens
    assert call_generate(directory, [])["text"].shape == (0,)


def test_saved_model_greedy_equals_keras_and_seeds_are_reproducible(random_lm,
                                                                    random_export):
    from pipeline.tasks.language_modeling import agreement_prompts

    task, model, _ = random_lm
    saved, _ = random_export
    prompts = agreement_prompts(task.texts["test"], 40) + PROMPTS[:4]
    keras = task.generate(model, prompts, strategy="greedy", max_new_tokens=10,
                          ids_only=True)
    served = generated_ids(call_generate(saved, prompts, max_new_tokens=10))
    assert served == keras
    assert len({tuple(ids) for ids in keras}) > len(prompts) // 2   # they differ
    sampled = [generated_ids(call_generate(saved, prompts, 10, 1.0, 20, 0.95, seed))
               for seed in (5, 5, 6)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2] and sampled[0] != served


def test_sampling_controls_restrict_the_choices(random_lm, random_export):
    """top_k=1 and a tiny top_p are greedy whatever the temperature and seed."""
    saved, _ = random_export
    prompts = PROMPTS[:4]
    greedy = generated_ids(call_generate(saved, prompts, 8))
    assert generated_ids(call_generate(saved, prompts, 8, 2.0, 1, 1.0, 3)) == greedy
    assert generated_ids(call_generate(saved, prompts, 8, 2.0, 0, 1e-6, 4)) == greedy


def test_random_model_tflite_loops_equal_keras(random_lm, random_export):
    """Greedy continuations and perplexity through prefill/decode equal the Keras model's."""
    from export.tflite import TFLiteModel
    from pipeline.tasks.language_modeling import agreement_prompts
    from pipeline.trainer import validate
    from tests.models.tflite_test_utils import assert_builtins_only

    task, model, module = random_lm
    _, path = random_export
    with open(path, "rb") as f:
        assert "DYNAMIC_UPDATE_SLICE" in assert_builtins_only(f.read())
    prompts = agreement_prompts(task.texts["test"], 40)
    keras = task.generate(model, prompts, strategy="greedy", max_new_tokens=20,
                          ids_only=True)
    reference = {"prompts": prompts, "greedy_ids": keras}
    metrics = module.evaluate_tflite(TFLiteModel(path), reference)
    assert metrics["agreement_with_keras"] >= 0.95
    keras_metrics, _ = validate(task, model, task.eval_dataset("test", 16))
    assert metrics["perplexity"] == pytest.approx(keras_metrics["perplexity"], rel=1e-3)
    assert metrics["tokens"] == sum(len(ids) - 1 for ids in task.token_ids("test"))
    assert metrics["time_to_first_token_ms"] > 0 and metrics["decode_tokens_per_second"] > 0


def test_variants_report_gate_and_saved_model_check(lm_run):
    cfg, metrics = lm_run
    tflite = metrics["tflite"]
    assert set(tflite) == VARIANTS
    for variant, r in tflite.items():
        assert 1.0 < r["perplexity"] < cfg.tokenizer.vocabulary_size, variant
        assert 0.0 <= r["agreement_with_keras"] <= 1.0
        assert r["latency_batch1"]["threads_1"]["median_ms"] > 0
    assert tflite["float32"]["perplexity"] == pytest.approx(metrics["test"]["perplexity"],
                                                            rel=1e-3)
    assert tflite["float32"]["agreement_with_keras"] >= 0.95
    assert tflite["dynamic_range"]["size_bytes"] < tflite["float32"]["size_bytes"]
    assert metrics["saved_model"]["greedy_agreement_with_keras"] >= 0.95
    assert metrics["saved_model"]["prompts"] == 200
    with open(os.path.join(cfg.run_dir, "report", "quantization.json")) as f:
        report = json.load(f)
    assert report["metric"] == "perplexity" and report["direction"] == "min"
    assert report["chosen"] in VARIANTS and report["variants"][report["chosen"]]["within_gate"]


def test_bundle_manifest(lm_run):
    cfg, metrics = lm_run
    with open(os.path.join(metrics["artifacts"]["edge_bundle"], "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["task"] == "language_modeling"
    assert set(manifest["files"]) == {"model.tflite", "spm.model"}
    assert manifest["max_sequence_length"] == 48 and manifest["prefill_length"] == 47
    assert set(manifest["signatures"]) == {"prefill", "decode"}
    assert manifest["signatures"]["decode"]["inputs"]["cache"]["shape"] == [1, 1, 2, 48, 2, 16]
    assert manifest["generate"]["seed"] == cfg.generate.seed


def test_local_server_generates_through_rest_and_grpc(lm_run):
    from serving.process import LocalServerProcess

    _, metrics = lm_run
    base = os.path.dirname(metrics["artifacts"]["saved_model"])
    server = LocalServerProcess(["--model_name", "language_model", "--model_base_path", base],
                                model="language_model", start_timeout=300)
    try:
        server.start()
        client = server.client(input_key="prompt")
        rest = client.predict(["The secret of", "Never"])
        grpc = client.predict(["The secret of", "Never"], protocol="grpc")
        assert rest.outputs["text"] == grpc.outputs["text"]
        assert rest.outputs["text"][0].startswith("The secret of")
        params = {"max_new_tokens": 5, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                  "seed": 0}
        generate = server.client(input_key="prompt", signature="generate")
        for protocol in ("rest", "grpc"):
            out = generate.predict(["Never", "A computer"], protocol, params=params)
            assert all(n <= 5 for n in out.outputs["num_tokens"])
            assert out.outputs["text"][0].startswith("Never")
    finally:
        server.close()


def test_generation_bench_measures_every_runtime(lm_run, tmp_path):
    """`python -m pipeline bench --generation`: every case, ratios against Keras without
    the cache, and the cached and TFLite greedy ids equal to the reference's."""
    from pipeline.cli import main

    cfg, _ = lm_run
    out = tmp_path / "gen.json"
    code = main(["bench", "--generation", "configs/language_model_debug.yaml",
                 "--set", f"runtime.artifacts_root={cfg.runtime.artifacts_root}",
                 "--set", f"data.tfds_data_dir={cfg.data.tfds_data_dir}",
                 "--prompts", "3", "--new-tokens", "6", "--repeats", "1",
                 "--out-json", str(out), "--out-md", str(tmp_path / "gen.md")])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["cases"]) == {"keras_no_cache", "keras_cache", "saved_model",
                                    *(f"tflite_{v}" for v in VARIANTS)}
    assert report["cases"]["keras_no_cache"]["ratio_vs_keras_no_cache"] == 1.0
    for name, r in report["cases"].items():
        assert r["tokens_per_second"] > 0, name
        if name != "keras_no_cache":
            assert r["time_to_first_token_ms"] > 0, name
        if "greedy_ids_equal_reference" in r:
            assert r["greedy_ids_equal_reference"] == 1.0, name
    assert "| tflite_float32 |" in (tmp_path / "gen.md").read_text()
