"""Tests for `models.Translator`: teacher forcing vs cached decoding, masking,
greedy decoding, precision, serialization and the TFLite encode/decode export."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from tflite_test_utils import assert_builtins_only, convert_archive

import models
from models.translator import TFLITE_SIGNATURES

SMALL = {
    "vocabulary_size": 40,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "dropout": 0.0,
    "max_source_length": 10,
    "max_target_length": 7,
}
BOS, EOS = 1, 2
HEAD_DIM = SMALL["hidden_dim"] // SMALL["num_heads"]
# Random untied models give varied greedy outputs; a random tied model's
# residual stream is dominated by its input token's embedding, so it mostly
# repeats one token (still a valid, but weak, greedy check).
VARIED = {"tie_embeddings": False}


def _model(**kwargs):
    return models.Translator(**{**SMALL, **kwargs})


def _build(model):
    """Builds `model` without calling it (weights do not depend on lengths)."""
    model.build({name: (None, None) for name in (
        "source_ids", "source_padding_mask", "target_ids", "target_padding_mask")})
    return model


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _sources(batch_size=3, seq=8, seed=0):
    """Source ids with 0 as padding: lengths seq, seq - 3, 2."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, SMALL["vocabulary_size"], size=(batch_size, seq))
    lengths = np.array([seq, seq - 3, 2])[:batch_size]
    mask = np.arange(seq)[None, :] < lengths[:, None]
    return np.where(mask, ids, 0).astype("int32"), mask


def _targets(batch_size=3, seq=SMALL["max_target_length"], seed=1):
    """Decoder inputs: bos, then random tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, SMALL["vocabulary_size"], size=(batch_size, seq))
    ids[:, 0] = BOS
    return ids.astype("int32")


def _inputs(source_ids, source_mask, target_ids, target_mask=None):
    if target_mask is None:
        target_mask = np.ones(target_ids.shape, bool)
    return {"source_ids": source_ids, "source_padding_mask": source_mask,
            "target_ids": target_ids, "target_padding_mask": target_mask}


def _cached_logits(model, source_ids, source_mask, target_ids):
    """Logits of `decode_step` fed `target_ids` one token at a time:
    (batch, target_seq, vocab)."""
    cross_cache = model.encode(source_ids, source_mask)
    self_cache = model.initial_self_cache(len(target_ids))
    steps = []
    for i in range(target_ids.shape[1]):
        logits, self_cache = model.decode_step(
            target_ids[:, i:i + 1], np.int32(i), self_cache, cross_cache, source_mask
        )
        steps.append(logits)
    return np.stack([_numpy(s) for s in steps], axis=1)


def _reference_greedy(model, source_ids, source_mask, max_length, eos_id):
    """Greedy decoding by the full teacher-forced `call`, recomputed from the
    whole prefix at every step (no cache)."""
    batch_size = len(source_ids)
    tokens = np.zeros((batch_size, max_length), "int32")
    finished = np.zeros(batch_size, bool)
    prefix = np.full((batch_size, 1), BOS, "int32")
    for i in range(max_length):
        if finished.all():
            break
        logits = _numpy(model(_inputs(source_ids, source_mask, prefix)))[:, i]
        next_ids = np.where(finished, 0, logits.argmax(-1)).astype("int32")
        tokens[:, i] = next_ids
        finished |= next_ids == eos_id
        prefix = np.concatenate([prefix, next_ids[:, None]], axis=1)
    return tokens


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_teacher_forced_logits_equal_cached_decoding(norm_first, tie_embeddings):
    # Dropout > 0: decode_step and call(training=False) must both skip it.
    model = _model(norm_first=norm_first, tie_embeddings=tie_embeddings, dropout=0.1)
    source_ids, source_mask = _sources()
    target_ids = _targets()
    # Row 2 is right-padded; its padded positions are not compared.
    target_mask = np.ones(target_ids.shape, bool)
    target_mask[2, 4:] = False
    logits = model(_inputs(source_ids, source_mask, target_ids, target_mask),
                   training=False)
    assert tuple(logits.shape) == (3, SMALL["max_target_length"], 40)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    logits = _numpy(logits)
    cached = _cached_logits(model, source_ids, source_mask, target_ids)
    assert cached.dtype == np.float32
    np.testing.assert_allclose(cached[target_mask], logits[target_mask], atol=1e-4)
    # Logits really depend on the source and on the prefix.
    assert np.abs(logits[0] - logits[1]).max() > 1e-3
    assert np.abs(logits[0, 0] - logits[0, 1]).max() > 1e-3


def test_cache_shapes():
    model = _model()
    source_ids, source_mask = _sources(seq=9)
    cross_cache = model.encode(source_ids, source_mask)
    assert tuple(cross_cache.shape) == (3, 2, 2, 9, 2, HEAD_DIM)
    self_cache = model.initial_self_cache(3)
    assert tuple(self_cache.shape) == (3, 2, 2, SMALL["max_target_length"], 2, HEAD_DIM)
    assert not np.any(_numpy(self_cache))
    logits, new_cache = model.decode_step(
        np.full((3, 1), BOS, "int32"), np.int32(0), self_cache, cross_cache, source_mask
    )
    assert tuple(logits.shape) == (3, 40)
    assert tuple(new_cache.shape) == tuple(self_cache.shape)
    # Only position 0 of every layer's keys and values was written.
    written = np.any(_numpy(new_cache) != 0, axis=(0, 1, 2, 4, 5))
    assert written.tolist() == [True] + [False] * (SMALL["max_target_length"] - 1)


def test_source_padding_does_not_change_outputs():
    model = _model(**VARIED)
    source_ids, source_mask = _sources(seq=7)
    # Three more padded positions, with ids that are not the padding id.
    extra = np.full((3, 3), 17, "int32")
    padded_ids = np.concatenate([source_ids, extra], axis=1)
    padded_mask = np.concatenate([source_mask, np.zeros((3, 3), bool)], axis=1)
    target_ids = _targets()
    np.testing.assert_allclose(
        _numpy(model(_inputs(padded_ids, padded_mask, target_ids))),
        _numpy(model(_inputs(source_ids, source_mask, target_ids))),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        _cached_logits(model, padded_ids, padded_mask, target_ids),
        _cached_logits(model, source_ids, source_mask, target_ids),
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        _numpy(model.greedy_decode(padded_ids, padded_mask, BOS, EOS)),
        _numpy(model.greedy_decode(source_ids, source_mask, BOS, EOS)),
    )


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_greedy_decode_equals_argmax_of_full_call(norm_first):
    model = _model(norm_first=norm_first, **VARIED)
    source_ids, source_mask = _sources()
    max_length = SMALL["max_target_length"]
    # An eos id that the free run never emits: every row runs to max_length.
    free = _reference_greedy(model, source_ids, source_mask, max_length, eos_id=-1)
    never = int(np.setdiff1d(np.arange(3, 40), free)[0])
    expected = _reference_greedy(model, source_ids, source_mask, max_length, never)
    np.testing.assert_array_equal(expected, free)
    assert len(np.unique(free)) > 1, "the random model should not be degenerate"

    tokens = model.greedy_decode(source_ids, source_mask, BOS, never)
    assert keras.backend.standardize_dtype(tokens.dtype) == "int32"
    np.testing.assert_array_equal(_numpy(tokens), expected)

    # In a graph with unknown batch and source length (as in a SavedModel).
    graph_decode = tf.function(
        lambda ids, mask: model.greedy_decode(ids, mask, BOS, never),
        input_signature=[tf.TensorSpec((None, None), tf.int32),
                         tf.TensorSpec((None, None), tf.bool)],
    )
    np.testing.assert_array_equal(
        _numpy(graph_decode(source_ids, source_mask)), expected
    )

    # A shorter max_length is a prefix of the longer run.
    np.testing.assert_array_equal(
        _numpy(model.greedy_decode(source_ids, source_mask, BOS, never, max_length=3)),
        expected[:, :3],
    )


def test_greedy_decode_eos_handling():
    model = _model(**VARIED)
    source_ids, source_mask = _sources()
    max_length = SMALL["max_target_length"]
    free = _reference_greedy(model, source_ids, source_mask, max_length, eos_id=-1)
    # An eos that row 0 emits first at a position k >= 1.
    k, eos_id = next((k, int(t)) for k, t in enumerate(free[0])
                     if k >= 1 and t not in free[0, :k])
    expected = _reference_greedy(model, source_ids, source_mask, max_length, eos_id)
    assert expected[0, k] == eos_id and not expected[0, k + 1:].any()
    for graph in (False, True):
        decode = tf.function(model.greedy_decode) if graph else model.greedy_decode
        tokens = _numpy(decode(source_ids, source_mask, BOS, eos_id))
        np.testing.assert_array_equal(tokens, expected)
        for row in tokens:  # After a row's eos: zeros (padding) only.
            if eos_id in row:
                end = list(row).index(eos_id)
                assert not row[end + 1:].any()


def test_greedy_decode_stops_when_every_row_has_ended(monkeypatch):
    model = _model(**VARIED)
    source_ids, source_mask = _sources()
    max_length = SMALL["max_target_length"]
    free = _numpy(model.greedy_decode(source_ids, source_mask, BOS, eos_id=-1))
    # An eos that every row emits; the loop needs one step past the last
    # row's first eos.
    common = set(free[0]).intersection(*(set(row) for row in free[1:]))
    eos_id = min(common, key=lambda t: max(list(row).index(t) for row in free))
    last = max(list(row).index(eos_id) for row in free)
    assert last + 1 < max_length, "choose a seed whose rows share an early token"
    calls = []
    decode_step = model.decode_step

    def counting_decode_step(*args):
        calls.append(1)
        return decode_step(*args)

    monkeypatch.setattr(model, "decode_step", counting_decode_step)
    tokens = _numpy(model.greedy_decode(source_ids, source_mask, BOS, int(eos_id)))
    assert len(calls) == last + 1
    np.testing.assert_array_equal(
        tokens, _reference_greedy(model, source_ids, source_mask, max_length, eos_id)
    )
    assert not tokens[:, last + 1:].any()


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_mixed_bfloat16_gives_float32_logits(tie_embeddings):
    model = _model(dtype="mixed_bfloat16", tie_embeddings=tie_embeddings)
    source_ids, source_mask = _sources()
    target_ids = _targets()
    logits = model(_inputs(source_ids, source_mask, target_ids))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(_numpy(logits)))
    cross_cache = model.encode(source_ids, source_mask)
    self_cache = model.initial_self_cache(3)
    assert keras.backend.standardize_dtype(cross_cache.dtype) == "bfloat16"
    step_logits, self_cache = model.decode_step(
        target_ids[:, :1], np.int32(0), self_cache, cross_cache, source_mask
    )
    assert keras.backend.standardize_dtype(step_logits.dtype) == "float32"
    assert keras.backend.standardize_dtype(self_cache.dtype) == "bfloat16"
    assert np.all(np.isfinite(_numpy(step_logits)))
    tokens = model.greedy_decode(source_ids, source_mask, BOS, EOS)
    assert tuple(tokens.shape) == (3, SMALL["max_target_length"])
    # bfloat16 stays close to float32 with the same weights.
    float32_model = _model(tie_embeddings=tie_embeddings)
    _build(float32_model)
    model_weights = [_numpy(w) for w in model.weights]
    float32_model.set_weights(model_weights)
    expected = _numpy(float32_model(_inputs(source_ids, source_mask, target_ids)))
    np.testing.assert_allclose(_numpy(logits), expected,
                               atol=0.05 * np.abs(expected).max())


def test_weights_and_tying():
    tied = _model()
    _build(tied)
    assert tied.decoder.embedding is tied.encoder.embedding
    assert tied.decoder.output_dense is None
    untied = _model(tie_embeddings=False)
    _build(untied)
    assert untied.decoder.embedding is not untied.encoder.embedding
    # Encoder: embedding 1, one block 16, final norm 2. Decoder: two blocks of
    # 26 (self- and cross-attention), final norm 2. Untied: a decoder
    # embedding 1 and the output kernel and bias 2.
    assert len(tied.weights) == 1 + 16 + 2 + 2 * 26 + 2
    assert len(untied.weights) == len(tied.weights) + 3
    assert _model(norm_first=False).decoder.final_layer_norm is None
    # The same weights exist after one call as after `build(None)`.
    called = _model()
    source_ids, source_mask = _sources()
    called(_inputs(source_ids, source_mask, _targets()))
    def paths(model):  # Without the model's own (unique) name.
        return [w.path.split("/", 1)[1] for w in model.weights]

    assert paths(called) == paths(tied)


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_config_round_trip(tie_embeddings):
    model = _model(tie_embeddings=tie_embeddings, norm_first=False, dropout=0.2)
    source_ids, source_mask = _sources()
    inputs = _inputs(source_ids, source_mask, _targets())
    expected = _numpy(model(inputs))
    config = model.get_config()
    arguments = set(inspect.signature(models.Translator.__init__).parameters)
    arguments -= {"self", "kwargs"}
    assert arguments <= set(config)
    assert set(config) - arguments <= {"name", "trainable", "dtype"}
    restored = models.Translator.from_config(config)
    assert restored.get_config() == config
    _build(restored)
    restored.set_weights(model.get_weights())
    np.testing.assert_allclose(_numpy(restored(inputs)), expected, atol=1e-6)
    # Without custom_objects: the class is registered.
    serialized = keras.saving.serialize_keras_object(model)
    assert isinstance(keras.saving.deserialize_keras_object(serialized),
                      models.Translator)


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_keras_file_save_and_load(tmp_path, tie_embeddings):
    model = _model(tie_embeddings=tie_embeddings)
    source_ids, source_mask = _sources()
    inputs = _inputs(source_ids, source_mask, _targets())
    expected = _numpy(model(inputs))
    path = str(tmp_path / "translator.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, models.Translator)
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_allclose(_numpy(loaded(inputs)), expected, atol=1e-6)
    np.testing.assert_allclose(
        _cached_logits(loaded, source_ids, source_mask, inputs["target_ids"]),
        expected, atol=1e-4,
    )


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"hidden_dim": 15}, "hidden_dim"),
        ({"num_heads": 0}, "num_heads"),
        ({"num_encoder_layers": 0}, "num_encoder_layers"),
        ({"num_decoder_layers": 1.5}, "num_decoder_layers"),
        ({"max_source_length": 0}, "max_source_length"),
        ({"max_target_length": -1}, "max_target_length"),
        ({"vocabulary_size": None}, "vocabulary_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm_first": "yes"}, "norm_first"),
        ({"tie_embeddings": 1}, "tie_embeddings"),
    ],
)
def test_invalid_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        _model(**kwargs)


def test_invalid_call_arguments():
    model = _model()
    source_ids, source_mask = _sources()
    with pytest.raises(ValueError, match="max_source_length"):
        long_ids = np.ones((1, SMALL["max_source_length"] + 1), "int32")
        model(_inputs(long_ids, long_ids > 0, _targets(1)))
    with pytest.raises(ValueError, match="max_target_length"):
        model(_inputs(source_ids, source_mask,
                      _targets(seq=SMALL["max_target_length"] + 1)))
    with pytest.raises(ValueError, match="target_ids"):
        model({"source_ids": source_ids, "source_padding_mask": source_mask})
    with pytest.raises(ValueError, match="max_length"):
        model.greedy_decode(source_ids, source_mask, BOS, EOS,
                            max_length=SMALL["max_target_length"] + 1)
    with pytest.raises(ValueError, match="max_length"):
        model.greedy_decode(source_ids, source_mask, BOS, EOS, max_length=0)
    cross_cache = model.encode(source_ids, source_mask)
    with pytest.raises(ValueError, match="self_cache"):
        model.decode_step(np.ones((3, 1), "int32"), np.int32(0),
                          np.zeros((3, 1, 2, 7, 2, HEAD_DIM), "float32"),
                          cross_cache, source_mask)
    with pytest.raises(ValueError, match="source_length"):
        model.tflite_archive(source_length=SMALL["max_source_length"] + 1)


@pytest.mark.slow
def test_greedy_decode_in_saved_model(tmp_path):
    model = _model(**VARIED)
    source_ids, source_mask = _sources()
    expected = _numpy(model.greedy_decode(source_ids, source_mask, BOS, EOS))

    def translate(source_ids, source_padding_mask):
        return {"tokens": model.greedy_decode(source_ids, source_padding_mask,
                                              BOS, EOS)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("translate", translate, input_signature=[
        tf.TensorSpec((None, None), tf.int32, name="source_ids"),
        tf.TensorSpec((None, None), tf.bool, name="source_padding_mask")])
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    tokens = loaded.signatures["translate"](
        source_ids=tf.constant(source_ids), source_padding_mask=tf.constant(source_mask)
    )["tokens"]
    np.testing.assert_array_equal(tokens.numpy(), expected)


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_tflite_encode_decode_greedy_loop_matches_keras(tmp_path, tie_embeddings):
    from ai_edge_litert.interpreter import Interpreter

    model = _model(tie_embeddings=tie_embeddings)
    length = SMALL["max_source_length"]
    source_ids, source_mask = _sources(batch_size=2, seq=length)
    source_ids, source_mask = source_ids[1:], source_mask[1:].astype("int32")  # padded
    # An eos the row emits (its first occurrence ends the loop early or not).
    free = _numpy(model.greedy_decode(source_ids, source_mask, BOS, eos_id=-1))
    eos_id = int(free[0, 3])
    expected_tokens = _numpy(model.greedy_decode(source_ids, source_mask, BOS, eos_id))
    assert eos_id in expected_tokens[0]

    flatbuffer = convert_archive(model.tflite_archive(), tmp_path / "saved_model",
                                 TFLITE_SIGNATURES)
    assert "DYNAMIC_UPDATE_SLICE" in assert_builtins_only(flatbuffer)

    interpreter = Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == set(TFLITE_SIGNATURES)
    encode = interpreter.get_signature_runner("encode")
    decode = interpreter.get_signature_runner("decode")
    for runner in (encode, decode):  # Static shapes, float32/int32 only.
        details = {**runner.get_input_details(), **runner.get_output_details()}
        for detail in details.values():
            assert np.dtype(detail["dtype"]) in (np.float32, np.int32)
            assert -1 not in list(detail["shape_signature"])
    cache_shape = (1, 2, 2, SMALL["max_target_length"], 2, HEAD_DIM)
    assert tuple(decode.get_input_details()["self_cache"]["shape"]) == cache_shape

    # The app's greedy loop: encode once, then decode step by step, passing
    # the cache back; the Keras decode_step is run beside it.
    cross_cache = encode(source_ids=source_ids, source_padding_mask=source_mask)[
        "cross_cache"
    ]
    keras_cross_cache = model.encode(source_ids, source_mask)
    np.testing.assert_allclose(cross_cache, _numpy(keras_cross_cache), atol=1e-4)
    self_cache = np.zeros(cache_shape, "float32")
    keras_self_cache = model.initial_self_cache(1)
    token = np.array([[BOS]], "int32")
    tokens = []
    for index in range(SMALL["max_target_length"]):
        outputs = decode(token_ids=token, index=np.array(index, "int32"),
                         self_cache=self_cache, cross_cache=cross_cache,
                         source_padding_mask=source_mask)
        self_cache = outputs["self_cache"]
        keras_logits, keras_self_cache = model.decode_step(
            token, np.int32(index), keras_self_cache, keras_cross_cache, source_mask
        )
        np.testing.assert_allclose(outputs["logits"], _numpy(keras_logits),
                                   atol=1e-4, err_msg=f"step {index}")
        token = outputs["logits"].argmax(-1).astype("int32")[:, None]
        tokens.append(int(token[0, 0]))
        if tokens[-1] == eos_id:
            break
    tokens += [0] * (SMALL["max_target_length"] - len(tokens))
    np.testing.assert_array_equal(tokens, expected_tokens[0])


# ----------------------------------------------------------------- beam search


def _sequence_scores(model, source_ids, source_mask, candidates, eos_id):
    """Teacher-forced log p of each candidate (ids after bos, eos-terminated or
    max-length), for one source."""
    scores = []
    for ids in candidates:
        target = np.array([[BOS] + list(ids)], "int32")
        logits = _numpy(model({"source_ids": source_ids, "source_padding_mask": source_mask,
                               "target_ids": target[:, :-1],
                               "target_padding_mask": np.ones_like(target[:, :-1])}))[0]
        log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        scores.append(sum(log_p[i, t] for i, t in enumerate(ids)))
    return np.array(scores)


def test_one_beam_is_greedy_and_beams_never_score_below_greedy():
    model = _model(**VARIED)
    source_ids, source_mask = _sources()
    greedy = _numpy(model.greedy_decode(source_ids, source_mask, BOS, EOS))
    one = _numpy(model.beam_decode(source_ids, source_mask, BOS, EOS, num_beams=1))
    np.testing.assert_array_equal(one, greedy)
    beam = _numpy(model.beam_decode(source_ids, source_mask, BOS, EOS, num_beams=4,
                                    length_penalty=0.0))
    for row in range(len(source_ids)):
        cut = [list(r[: list(r).index(EOS) + 1] if EOS in r else r)
               for r in (greedy[row], beam[row])]
        g, b = _sequence_scores(model, source_ids[row:row + 1], source_mask[row:row + 1],
                                cut, EOS)
        assert b >= g - 1e-4, row
        assert (beam[row][len(cut[1]):] == 0).all()      # padding after eos


def test_wide_beam_finds_the_exhaustive_best_sequence():
    """With as many beams as there are prefixes, beam search (no length penalty) is
    exhaustive: it returns the most likely sequence of all."""
    import itertools

    vocab, length, eos = 5, 3, 2
    model = models.Translator(**{**SMALL, **VARIED, "vocabulary_size": vocab,
                                 "max_target_length": length})
    keras.utils.set_random_seed(3)
    model.set_weights([w * 4.0 if w.ndim >= 2 else w for w in model.get_weights()])
    source_ids, source_mask = _sources(batch_size=1)
    source_ids = np.minimum(source_ids, vocab - 1)
    candidates = []
    for n in range(1, length + 1):
        for ids in itertools.product(range(vocab), repeat=n):
            if (eos in ids[:-1]) or (n < length and ids[-1] != eos):
                continue
            candidates.append(ids)
    scores = _sequence_scores(model, source_ids, source_mask, candidates, eos)
    best = list(candidates[int(np.argmax(scores))])
    beam = _numpy(model.beam_decode(source_ids, source_mask, BOS, eos,
                                    num_beams=vocab ** (length - 1), length_penalty=0.0))
    assert list(beam[0][: len(best)]) == best


def test_edge_numpy_beam_search_equals_keras_through_tflite(tmp_path):
    import functools

    from edge.runners.translation import beam_decode
    from export.tflite import TFLiteModel

    model = _model(**VARIED)
    length = SMALL["max_source_length"]
    source_ids, source_mask = _sources(batch_size=3, seq=length)
    flatbuffer = convert_archive(model.tflite_archive(), tmp_path / "saved_model",
                                 TFLITE_SIGNATURES)
    path = tmp_path / "t.tflite"
    path.write_bytes(flatbuffer)
    tflite = TFLiteModel(str(path))
    cache_shape = (1, 2, 2, SMALL["max_target_length"], 2, HEAD_DIM)
    keras_beams = _numpy(model.beam_decode(source_ids, source_mask, BOS, EOS, num_beams=3,
                                           length_penalty=0.6))
    for row in range(len(source_ids)):
        edge = beam_decode(functools.partial(tflite, "encode"),
                           functools.partial(tflite, "decode"), source_ids[row], cache_shape,
                           BOS, EOS, SMALL["max_target_length"], num_beams=3,
                           length_penalty=0.6)
        expected = list(keras_beams[row][: len(edge)])
        assert list(edge) == expected and (keras_beams[row][len(edge):] == 0).all(), row
