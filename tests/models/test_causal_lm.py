"""Tests for `models.CausalLanguageModel`: packed rows, cached = full pass,
generation against a loop without cache, samplers, serialization."""

import keras
import numpy as np
import pytest

import models
from models.causal_lm import make_sampler

SMALL = {
    "vocabulary_size": 40,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "num_heads": 2,
    "num_layers": 2,
    "dropout": 0.0,
    "max_sequence_length": 12,
    # Untied: a random tied model mostly repeats its input token.
    "tie_embeddings": False,
}
BOS, EOS = 1, 2


def _model(**kwargs):
    model = models.CausalLanguageModel(**{**SMALL, **kwargs})
    model.build()
    return model


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _ids(batch=2, seq=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(3, SMALL["vocabulary_size"], size=(batch, seq)).astype("int32")


def test_logits_shape_and_dtype():
    model = _model()
    logits = model({"token_ids": _ids()})
    assert tuple(logits.shape) == (2, 9, SMALL["vocabulary_size"])
    assert logits.dtype == "float32"


def test_causal_the_past_does_not_see_the_future():
    model, ids = _model(), _ids()
    changed = ids.copy()
    changed[:, 5:] = 7
    a, b = _numpy(model({"token_ids": ids})), _numpy(model({"token_ids": changed}))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_packed_documents_do_not_attend_to_each_other():
    """Two texts in one row: the second's logits ignore the first's tokens."""
    model, ids = _model(), _ids(batch=1)
    segments = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1]], "int32")
    changed = ids.copy()
    changed[0, :4] = [5, 6, 7, 8]
    a = _numpy(model({"token_ids": ids, "segment_ids": segments}))
    b = _numpy(model({"token_ids": changed, "segment_ids": segments}))
    np.testing.assert_allclose(a[:, 4:], b[:, 4:], atol=1e-5)
    # Without segments the second text does see the first.
    c = _numpy(model({"token_ids": ids}))
    d = _numpy(model({"token_ids": changed}))
    assert not np.allclose(c[:, 4:], d[:, 4:], atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_prefill_then_steps_equal_the_full_pass(dtype):
    model = _model(dtype=dtype)
    ids = _ids(seq=SMALL["max_sequence_length"])
    full = _numpy(model({"token_ids": ids}))
    cache = model.initial_cache(2)
    prefill, cache = model.call_with_cache(ids[:, :5], 0, cache)
    steps = [_numpy(prefill)]
    for i in range(5, ids.shape[1]):
        logits, cache = model.call_with_cache(ids[:, i: i + 1], i, cache)
        steps.append(_numpy(logits))
    atol = 1e-4 if dtype == "float32" else 0.15
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=atol)


def _greedy_without_cache(model, prompt, new_tokens):
    ids = list(prompt)
    for _ in range(new_tokens):
        logits = _numpy(model({"token_ids": np.array([ids], "int32")}))
        ids.append(int(np.argmax(logits[0, -1])))
        if ids[-1] == EOS:
            break
    return ids


def test_greedy_generation_matches_a_loop_without_cache_for_prompts_of_different_lengths():
    model = _model()
    prompts = [[BOS, 5, 9, 11], [BOS, 7]]
    ids = np.zeros((2, 4), "int32")
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    out = _numpy(model.generate(ids, ids != 0, max_new_tokens=5, stop_token_id=EOS,
                                sampler=make_sampler("greedy")))
    assert out.shape == (2, 9)
    for row, prompt in zip(out, prompts):
        expected = _greedy_without_cache(model, prompt, 5)
        got = row[: len(expected)].tolist()
        assert got == expected, (got, expected)


@pytest.mark.parametrize("strategy", ["random", "top_k", "top_p"])
def test_seeded_sampling_is_reproducible_and_keeps_the_prompt(strategy):
    model = _model()
    ids = np.array([[BOS, 5, 9], [BOS, 7, 0]], "int32")

    def run(seed):
        sampler = make_sampler(strategy, temperature=1.5, top_k=10, top_p=0.95, seed=seed)
        return _numpy(model.generate(ids, ids != 0, 8, EOS, sampler))

    first, again, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first[0, :3], [BOS, 5, 9])
    np.testing.assert_array_equal(first[1, :2], [BOS, 7])
    assert first.shape == (2, 11) and first.min() >= 0
    assert first.max() < SMALL["vocabulary_size"]


def test_generation_length_is_capped_by_the_cache():
    model = _model()
    ids = np.array([[BOS, 5, 9]], "int32")
    out = model.generate(ids, ids != 0, 100, EOS, make_sampler("greedy"))
    assert out.shape == (1, SMALL["max_sequence_length"])


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "beam"}, "`strategy`"),
    ({"temperature": 0.0}, "`temperature`"),
    ({"strategy": "top_k", "top_k": 0}, "`top_k`"),
    ({"strategy": "top_p", "top_p": 1.5}, "`top_p`"),
])
def test_bad_sampler_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(**kwargs)


def test_bad_generate_arguments():
    model = _model()
    ids = np.array([[BOS, 5]], "int32")
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, ids != 0, 0, EOS, make_sampler("greedy"))
    long = np.ones((1, SMALL["max_sequence_length"]), "int32")
    with pytest.raises(ValueError, match="max_sequence_length"):
        model.generate(long, long != 0, 1, EOS, make_sampler("greedy"))


def test_serialization_round_trip(tmp_path):
    model = _model()
    ids = _ids()
    path = str(tmp_path / "lm.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_numpy(loaded({"token_ids": ids})),
                               _numpy(model({"token_ids": ids})), atol=1e-6)


# ------------------------------------------- stateless sampling, TFLite export


def _processed(seed, index, temperature=1.0, top_k=0, top_p=1.0, logits=None):
    from models.causal_lm import seeded_logits_processor

    if logits is None:
        logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000, "float32"))
    process = seeded_logits_processor(seed, temperature, top_k, top_p)
    return np.argmax(_numpy(process(logits, index)), axis=-1)


def test_seeded_processor_samples_the_distribution_reproducibly():
    draws = _processed(seed=3, index=5)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 2000,
                               [0.5, 0.3, 0.15, 0.05], atol=0.035)
    np.testing.assert_array_equal(draws, _processed(seed=3, index=5))
    assert (draws != _processed(seed=4, index=5)).any()
    assert (draws != _processed(seed=3, index=6)).any()     # a new draw per step


def test_seeded_processor_controls():
    assert (_processed(3, 5, temperature=0.0) == 0).all()              # greedy
    assert set(_processed(3, 5, top_k=2)) == {0, 1}
    assert set(_processed(3, 5, top_p=0.7)) == {0, 1}                  # 0.5 < 0.7 <= 0.8
    assert (_processed(3, 5, top_p=1e-6) == 0).all()
    assert (_processed(3, 5, top_k=1, temperature=5.0) == 0).all()
    hot = np.bincount(_processed(3, 5, temperature=0.3), minlength=4) / 2000
    assert hot[0] > 0.8


def test_generate_takes_a_tensor_max_new_tokens_in_a_graph():
    import keras_hub
    import tensorflow as tf

    from models.causal_lm import seeded_logits_processor

    model = _model()
    ids = np.array([[BOS, 5, 9, 0], [BOS, 6, 7, 8]], "int32")

    @tf.function
    def run(n, seed):
        return model.generate(ids, ids != 0, n, EOS, keras_hub.samplers.GreedySampler(),
                              seeded_logits_processor(seed, 1.0))

    out = run(tf.constant(5), tf.constant(1)).numpy()
    assert out.shape == (2, 4 + 5)
    np.testing.assert_array_equal(out[:, :3], ids[:, :3])
    np.testing.assert_array_equal(out, run(tf.constant(5), tf.constant(1)).numpy())
    assert run(tf.constant(100), tf.constant(1)).numpy().shape == (2, 12)   # the cache


def test_tflite_prefill_and_decode_equal_keras(tmp_path):
    """Builtins only; a prefill over a padded prompt and decode steps give the Keras
    model's logits, and the edge loop's greedy ids are Keras's."""
    import functools

    import keras_hub
    from tflite_test_utils import assert_builtins_only, convert_archive

    from edge.runners.language_modeling import generate_tokens
    from export.tflite import TFLiteModel

    model = _model()
    flatbuffer = convert_archive(model.tflite_archive(), str(tmp_path / "sm"),
                                 ["prefill", "decode"])
    assert "DYNAMIC_UPDATE_SLICE" in assert_builtins_only(flatbuffer)
    path = tmp_path / "lm.tflite"
    path.write_bytes(flatbuffer)
    tflite = TFLiteModel(str(path))
    ids = _ids(batch=1, seq=7)
    full = _numpy(model({"token_ids": ids}))[0]
    padded = np.zeros((1, 11), "int32")
    padded[0, :4] = ids[0, :4]
    out = tflite("prefill", token_ids=padded, length=np.array(4, "int32"))
    np.testing.assert_allclose(out["logits"][0], full[3], atol=1e-4)
    cache = out["cache"]
    for i in range(4, 7):
        out = tflite("decode", token_ids=ids[:, i:i + 1], index=np.array(i, "int32"),
                     cache=cache)
        np.testing.assert_allclose(out["logits"][0], full[i], atol=1e-4)
        cache = out["cache"]
    prompt = [BOS, 5, 9]
    edge = list(generate_tokens(functools.partial(tflite, "prefill"),
                                functools.partial(tflite, "decode"), prompt, 11, 8, EOS,
                                lambda logits: int(np.argmax(logits)), 12))
    keras_ids = _numpy(model.generate(np.array([prompt], "int32"), np.ones((1, 3), bool), 8,
                                      EOS, keras_hub.samplers.GreedySampler()))[0, 3:]
    keras_ids = list(keras_ids)
    assert edge == keras_ids[: len(edge)]
    assert len(edge) == 8 or edge[-1] == EOS
