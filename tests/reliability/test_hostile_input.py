"""Hostile input, property-based (hypothesis): every entry point that reads outside
input gets random and adversarial values, and the only outcomes allowed are a
result or a clear error (the module's own error type, one line, no traceback),
never a crash, a hang or a 5xx.

Entry points: the config loader (YAML files and --set overrides), the CSV/JSONL
readers, the tokenizer path (tensorflow-text in the graph, the sentencepiece
library on device, SentencePiece training), the REST request parser (the real
WSGI app over the real debug SavedModel), and the edge app (library and CLI).
Inputs: invalid UTF-8, NUL bytes, emoji, right-to-left text, 1 MB strings, deeply
nested JSON/YAML, huge numbers, wrong types. The examples are derandomized (the
"reliability" profile in conftest.py), so every run tries the same inputs; the
count of inputs tried is printed at the end ("reliability figures").
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.reliability import figures

pytestmark = pytest.mark.slow   # needs the session's debug run (a trained model)

EDGE_APP = os.path.join(ROOT, "edge", "app.py")
SECONDS_PER_INPUT = 10.0        # "never a hang": any single input slower than this fails

# ----------------------------------------------------------------- strategies
MB = 1_000_000
# 1 MB strings travel through the strategies as short markers ("\u27e60\u27e7") that the
# tests expand: hypothesis then neither stores nor prints megabytes per example.
# None of them needs escaping in JSON, YAML or CSV, so they stay valid documents.
BIG_STRINGS = ["x" * MB, "\U0001f642" * (MB // 4), "\u202e\u05d0\u05d1\u05d2 " * (MB // 5),
               ("a small dog " * (MB // 12 + 1))[:MB]]
BIG_MARKERS = [f"\u27e6{i}\u27e7" for i in range(len(BIG_STRINGS))]


def expand(value):
    """The input with each 1 MB marker replaced by its string (str or bytes)."""
    for marker, big in zip(BIG_MARKERS, BIG_STRINGS):
        if isinstance(value, str) and marker in value:
            value = value.replace(marker, big)
        elif isinstance(value, bytes) and marker.encode() in value:
            value = value.replace(marker.encode(), big.encode())
    return value


SPECIALS = ["", " ", "\t\n\r", "\x00", "a\x00b", "\u202e", "\u200f\u05e9\u05dc\u05d5\u05dd",
            "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\U0001f642",
            "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\ufeff",
            "\ufffd", "\u0301\u0301\u0301", "Z\u0351\u036b\u0343\u036a\u0302", "\U0010ffff",
            "\\", '"', "'", "{", "[", "{{x}}", "%s%n", "../../etc/passwd", "<script>",
            "NaN", "Infinity", "-0", "1e400", "9" * 5000, "true", "null", "~", ": -",
            "\u2028\u2029", "\x1b[31m", "\r", "a\rb"]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1",
                b"\xf0\x28\x8c\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\x80", b"\xf8\x88\x80\x80\x80"]

small_texts = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(codec="utf-8"), max_size=60),
    st.sampled_from(SPECIALS),
    st.lists(st.sampled_from(SPECIALS) | st.text(max_size=8), max_size=8).map("".join),
)
texts = st.one_of(small_texts, small_texts, small_texts, st.sampled_from(BIG_MARKERS))
# lone surrogates: what invalid bytes in a command-line argument or a "\ud800" JSON
# escape turn into inside Python
surrogate_texts = st.lists(st.sampled_from(["\ud800", "\udcff", "\udfff", "a", "\U0001f642"]),
                           min_size=1, max_size=6).map("".join)
raw_bytes = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(INVALID_UTF8),
    st.lists(st.sampled_from(INVALID_UTF8) | st.binary(max_size=6)
             | texts.map(lambda t: t[:50].encode("utf-8", "surrogatepass")),
             max_size=10).map(b"".join),
)
huge_numbers = st.sampled_from([2 ** 31, -2 ** 31 - 1, 2 ** 63, -2 ** 64, 10 ** 100,
                                10 ** 4000, 1e308, -1e308, float("inf"), float("-inf"),
                                float("nan"), 5e-324, -0.0])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_numbers,
                    st.floats(allow_nan=True), texts)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(texts.map(lambda t: t[:40]), inner, max_size=5), max_leaves=25)


def nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "dict":
        return '{"a": ' * depth + "1" + "}" * depth
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "1"  # YAML block


deep_documents = st.builds(nested, st.sampled_from([10, 33, 200, 1000, 10_000, 100_000]),
                           st.sampled_from(["list", "dict"]))


def json_text(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return json.dumps(str(value)[:1000])


def bounded(name: str):
    """Counts one input of `name` and fails it when it takes longer than the bound."""
    class Timer:
        def __enter__(self):
            self.start = time.monotonic()
            figures.add(f"hostile inputs tried: {name}")
            return self

        def __exit__(self, *exc):
            took = time.monotonic() - self.start
            assert took < SECONDS_PER_INPUT, f"{name}: one input took {took:.1f}s"
            return False
    return Timer()


def assert_clear(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "Traceback" not in message and 'File "' not in message, message[:500]
    assert len(message) < 2_000, f"error message of {len(message):,} characters"


# --------------------------------------------------------------- config loader
CONFIG_KEYS = ["name", "data.source", "data.train_path", "data.labels",
               "data.max_examples_per_split", "tokenizer.vocabulary_size",
               "model.hidden_dim", "model.num_heads",
               "model.dropout", "model.pooling", "train.epochs", "train.learning_rate",
               "train.global_batch_size", "runtime.strategy", "runtime.artifacts_root",
               "runtime.jit_compile", "export.tflite_variants", "export.edge_variant",
               "export.version", "nope", "train", "train.nope", "a.b.c.d"]


def config_document(key: str, value) -> dict:
    doc: object = value
    for part in reversed(key.split(".")):
        doc = {part: doc}
    return doc


config_files = st.one_of(
    raw_bytes,
    texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    deep_documents.map(str.encode),
    st.builds(nested, st.sampled_from([50, 500]), st.just("yaml_block")).map(str.encode),
    st.builds(config_document, st.sampled_from(CONFIG_KEYS), json_values)
    .map(lambda d: json_text(d).encode("utf-8", "surrogatepass")),   # JSON is YAML
    st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), json_values), max_size=4)
    .map(lambda kvs: "\n".join(f"{k}: {json_text(v)}" for k, v in kvs).encode(
        "utf-8", "surrogatepass")),
    st.sampled_from([b"a: &a [1]\nb: &b [*a, *a]\nc: [*b, *b]\n",
                     b"name: !!python/object/apply:os.system ['echo pwned']\n",
                     b"!!binary aGVsbG8=", b"%YAML 9.9\n---\n", b"---\n...\n---\n"]),
)


@settings(max_examples=400)
@given(content=config_files)
def test_config_loader_returns_a_config_or_a_config_error(content, tmp_path):
    from pipeline.config import ConfigError, ExperimentConfig, load_config

    path = tmp_path / "hostile.yaml"
    path.write_bytes(expand(content))
    with bounded("config files"):
        try:
            result = load_config(str(path))
        except ConfigError as err:
            assert_clear(str(err))
        else:
            assert isinstance(result, ExperimentConfig)
            assert result.name not in (".", "..") and "/" not in result.name


@settings(max_examples=300)
@given(key=st.sampled_from(CONFIG_KEYS) | texts.map(lambda t: t[:60]),
       value=texts | deep_documents | json_values.map(json_text))
def test_config_overrides_return_a_config_or_a_config_error(key, value):
    from pipeline.config import ConfigError, ExperimentConfig, load_config

    with bounded("config overrides"):
        try:
            result = load_config(None, [expand(f"{key}={value}")])
        except ConfigError as err:
            assert_clear(str(err))
        else:
            assert isinstance(result, ExperimentConfig)


# ------------------------------------------------------------ CSV/JSONL readers
def csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


rows = st.lists(st.tuples(texts, st.sampled_from(["a", "b", "c"]) | texts.map(lambda t: t[:20])),
                min_size=1, max_size=12)
csv_files = st.one_of(
    raw_bytes,
    rows.map(lambda rs: ("text,label\n" + "".join(f"{csv_field(t)},{csv_field(label)}\n"
                                                  for t, label in rs))
             .encode("utf-8", "surrogatepass")),
    rows.map(lambda rs: ("text,label\n" + "".join(f"{t},{label}\n" for t, label in rs))
             .encode("utf-8", "surrogatepass")),                        # unquoted
    st.lists(raw_bytes, max_size=6).map(lambda bs: b"text,label\n" + b"\n".join(
        b"%s,a" % b for b in bs)),
)
jsonl_lines = st.one_of(
    st.builds(lambda t, label: json_text({"text": t, "label": label}), texts, json_values),
    json_values.map(json_text), deep_documents, texts,
    st.builds(lambda d: f'{{"text": "a", "label": {d}}}', deep_documents),
    st.sampled_from(['{"text": "a", "label": ' + "9" * 5000 + "}",
                     '{"text": "\\ud800", "label": "a"}', '{"text": "a", "label": NaN}',
                     '{"text": null, "label": "a"}']),
)
jsonl_files = st.one_of(
    raw_bytes,
    st.lists(jsonl_lines, min_size=1, max_size=10).map(
        lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.lists(jsonl_lines.map(lambda line: line.encode("utf-8", "surrogatepass")) | raw_bytes,
             max_size=6).map(b"\n".join),
)


@settings(max_examples=300)
@given(fmt_content=st.one_of(st.tuples(st.just("csv"), csv_files),
                             st.tuples(st.just("jsonl"), jsonl_files)))
def test_csv_and_jsonl_readers_return_splits_or_a_data_error(fmt_content, tmp_path):
    from pipeline.config import DataConfig
    from pipeline.sources import DataError, load_splits

    fmt, content = fmt_content
    path = tmp_path / f"hostile.{fmt}"
    path.write_bytes(expand(content))
    with bounded(f"{fmt} files"):
        try:
            splits = load_splits(DataConfig(source=fmt, train_path=str(path)),
                                 log=lambda *_: None)
        except DataError as err:
            assert_clear(str(err))
            assert str(path) in str(err) or "split" in str(err), str(err)
        else:
            for split, array in splits.texts.items():
                assert all(isinstance(t, str) for t in array)
                for t in array:
                    t.encode("utf-8")   # only valid text reaches the tokenizer
                assert splits.labels[split].dtype == np.int32
                assert ((0 <= splits.labels[split])
                        & (splits.labels[split] < splits.num_classes)).all()


# -------------------------------------------------------------- tokenizer path
@pytest.fixture(scope="module")
def edge_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("edge_app_hostile", EDGE_APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_app_hostile"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizers(debug_run):
    import sentencepiece as spm

    from pipeline.tokenizer import InGraphTokenizer, read_model

    cfg, _ = debug_run
    path = os.path.join(cfg.run_dir, "tokenizer", "spm.model")
    processor = spm.SentencePieceProcessor(model_file=path)
    return (InGraphTokenizer(read_model(path), cfg.model.max_sequence_length), processor,
            cfg.model.max_sequence_length)


@settings(max_examples=300)
@given(batch=st.lists(texts.map(lambda t: t.encode("utf-8", "surrogatepass")) | raw_bytes,
                      min_size=1, max_size=6))
def test_tokenizer_maps_any_bytes_to_ids_in_range(tokenizers, edge_module, batch):
    import tensorflow as tf

    in_graph, processor, length = tokenizers
    batch = [expand(b) for b in batch]
    with bounded("tokenizer (tensorflow-text)"):
        ids = in_graph(tf.constant(batch, dtype=tf.string)).numpy()
    assert ids.shape == (len(batch), length) and ids.dtype == np.int32
    assert ((ids >= 0) & (ids < processor.get_piece_size())).all()
    for raw, row in zip(batch, ids):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        # the same ids on device (the edge app's tokenize, with the sentencepiece library)
        on_device = edge_module.tokenize(processor, text, length, 0, in_graph.max_text_bytes)
        assert list(row) == list(on_device)


@settings(max_examples=12)
@given(sample=st.lists(texts.map(lambda t: t[:2000]), min_size=1, max_size=30))
def test_tokenizer_training_on_hostile_texts(sample, tmp_path):
    import shutil as sh

    from pipeline.config import ConfigError, TokenizerConfig
    from pipeline.tokenizer import train_sentencepiece, vocabulary_size

    out = tmp_path / "spm"
    sh.rmtree(out, ignore_errors=True)
    # the train split is never empty
    corpus = [expand(t) for t in sample] + ["a small dog", "a tall tree"]
    with bounded("tokenizer training corpora"):
        try:
            path = train_sentencepiece(corpus, TokenizerConfig(vocabulary_size=64), str(out),
                                       log=lambda *_: None)
        except ConfigError as err:   # e.g. more distinct characters than vocabulary
            assert_clear(str(err))
            assert "tokenizer." in str(err)
        else:
            assert vocabulary_size(path) >= 5


# ------------------------------------------------------------ REST parser
@pytest.fixture(scope="module")
def rest_app(saved_model_dir, tmp_path_factory):
    """The local server's WSGI app over a ServerCore that loaded the debug SavedModel."""
    from tensorflow_serving.config import model_server_config_pb2
    from werkzeug.test import Client

    from serving.rest import RestApi
    from serving.servables import CoreOptions, Limits, ServerCore

    root = tmp_path_factory.mktemp("rest") / "m"
    root.mkdir()
    shutil.copytree(saved_model_dir, root / "1")
    config = model_server_config_pb2.ModelConfig(name="m", base_path=str(root),
                                                 model_platform="tensorflow")
    core = ServerCore([config], CoreOptions(limits=Limits(max_batch_size=1000)),
                      log=lambda *_: None)
    core.wait_until_available(1)
    return Client(RestApi(core, max_request_bytes=2 * MB))


PATHS = ["/v1/models/m:predict", "/v1/models/m/versions/1:predict",
         "/v1/models/m/labels/stable:predict", "/v1/models/m:classify",
         "/v1/models/..%2F..%2Fetc%2Fpasswd:predict", "/v1/models/m/versions/1/../../x:predict",
         "/v1/models/%00:predict", "/v1/models/m/versions/99999999999999999999999:predict",
         "/v1/models/m/versions/-1:predict", "/v1/models/" + "m" * 5000 + ":predict",
         "/v1/models/\u202e\U0001f642:predict", "/v1/models/m", "/v1/models/m/metadata",
         "/v1/models/%ff%fe", "/v1/../../etc/passwd", "/", "/monitoring/prometheus/metrics"]
SIGNATURES = st.sampled_from(["", "serving_default", "token_ids", "tokenize", "nope",
                              "__saved_model_init_op"]) | texts.map(lambda t: t[:30]) \
    | json_values
token_rows = st.lists(st.lists(st.integers(-2 ** 31, 2 ** 31 - 1)
                               | st.sampled_from([0, 1, 999, 1000, 10 ** 6]), max_size=40),
                      min_size=1, max_size=4)
instances = st.one_of(
    st.lists(texts, min_size=1, max_size=4),
    st.lists(raw_bytes.map(lambda b: {"b64": base64.b64encode(b).decode()}), min_size=1,
             max_size=3),
    token_rows, json_values,
    st.lists(st.dictionaries(st.sampled_from(["text", "token_ids", "b64", "x"]), json_values,
                             max_size=3), min_size=1, max_size=3),
)


def request_body(kind: str, signature, payload) -> bytes:
    body = {"instances": payload} if kind == "instances" else \
        {"inputs": payload} if kind == "inputs" else \
        {"inputs": {"text": payload}} if kind == "named" else \
        {"instances": payload, "inputs": payload}
    if signature != "":
        body["signature_name"] = signature
    return json_text(body).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.builds(request_body, st.sampled_from(["instances", "inputs", "named", "both"]),
              SIGNATURES, instances),
    raw_bytes, deep_documents.map(str.encode),
    deep_documents.map(lambda d: f'{{"instances": {d}}}'.encode()),
    json_values.map(lambda v: json_text(v).encode("utf-8", "surrogatepass")),
    st.sampled_from(['{"instances": [' + "1" * 5000 + "]}", '{"instances": [NaN]}',
                     '{"instances": ["a"]' + " " * MB + "}",
                     '{"instances": ["' + BIG_MARKERS[0] + '"]}',
                     '{"signature_name": "token_ids", "instances": [[]]}']).map(str.encode),
)


@settings(max_examples=700)
@given(path=st.sampled_from(PATHS), body=bodies,
       method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
def test_rest_api_answers_hostile_requests_without_5xx(rest_app, path, body, method):
    body = expand(body)
    with bounded("REST requests"):
        response = rest_app.open(path, method=method, data=body,
                                 content_type="application/json")
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    text = response.get_data(as_text=True)
    if path.startswith("/monitoring"):
        assert response.status_code == 404
        return
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    if response.status_code >= 400:
        assert set(payload) == {"error"}
        assert_clear(payload["error"])
    elif method == "POST":
        assert set(payload) <= {"predictions", "outputs"}


@settings(max_examples=150)
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_rest_api_classifies_every_valid_text(rest_app, batch):
    batch = [expand(t) for t in batch]
    body = json_text({"instances": batch}).encode("utf-8")
    with bounded("REST requests"):
        response = rest_app.post("/v1/models/m:predict", data=body,
                                 content_type="application/json")
    if len(body) > 2 * MB:
        assert response.status_code == 413, response.get_data(as_text=True)[:300]
        return
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    predictions = response.get_json()["predictions"]
    assert len(predictions) == len(batch)
    for p in predictions:
        assert p["label"].startswith("noun.")
        assert abs(sum(p["probabilities"]) - 1.0) < 1e-3


# ------------------------------------------------------------ the edge app
@pytest.fixture(scope="module")
def edge(edge_module, edge_bundle):
    return edge_module.load_bundle(edge_bundle)


@settings(max_examples=300)
@given(text=texts | surrogate_texts, top_k=st.integers(-5, 100))
def test_edge_library_classifies_any_text(edge, text, top_k):
    with bounded("edge app texts"):
        result = edge.classify_one(expand(text), top_k=top_k)
    assert result["label"] in edge.labels
    assert 0.0 <= result["probability"] <= 1.0
    assert 1 <= len(result["top_k"]) <= edge.num_classes
    result["text"].encode("utf-8")   # printable and writable as UTF-8


@settings(max_examples=300)
@given(content=jsonl_files)
def test_edge_jsonl_reader_yields_texts_or_reports_the_line(edge_module, content):
    content = expand(content)
    def lines():
        return io.TextIOWrapper(io.BytesIO(content), encoding="utf-8", errors="replace")

    bad = []
    with bounded("edge app JSONL files"):
        got = list(edge_module.iter_jsonl(lines(), lambda n, reason: bad.append((n, reason))))
    numbered = list(lines())
    assert all(isinstance(text, str) for _, text in got)
    assert len(got) + len(bad) == sum(1 for line in numbered if line.strip()), (got, bad)
    for number, reason in bad:
        assert_clear(reason)
        assert 1 <= number <= len(numbered)


@settings(max_examples=4)
@given(lines=st.lists(jsonl_lines.map(lambda line: line.replace("\n", " ")),
                      min_size=5, max_size=40))
def test_edge_cli_survives_a_hostile_jsonl_file(edge_bundle, lines, tmp_path):
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(expand("\n".join(lines).encode("utf-8", "surrogatepass")) + b"\n\xff\xfe\n")
    with bounded("edge app CLI runs"):
        proc = subprocess.run([sys.executable, EDGE_APP, "--bundle", edge_bundle,
                               "--jsonl", str(src), "--top-k", "3"],
                              capture_output=True, timeout=120, cwd=ROOT)
    figures.add("hostile inputs tried: edge app CLI lines", len(lines) + 1)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode in (0, 1), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    for line in proc.stdout.decode("utf-8").splitlines():
        assert json.loads(line)["label"]


def test_edge_cli_takes_invalid_bytes_in_arguments_and_stdin(edge_bundle):
    args = [b"\xff\xfe", b"caf\xc3\xa9 \xed\xa0\x80", "\u202e\u05d0\u05d1 \U0001f642".encode(),
            b"x" * 100_000]
    proc = subprocess.run([sys.executable.encode(), EDGE_APP.encode(), b"--bundle",
                           edge_bundle.encode(), *args], capture_output=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert len(proc.stdout.splitlines()) == len(args)
    stdin = b"\n".join([b"a\x00b", b"\xff\xfe\xfd", b"\xc0\xaf", "\U0001f642".encode() * 1000, b""])
    proc = subprocess.run([sys.executable, EDGE_APP, "--bundle", edge_bundle],
                          input=stdin, capture_output=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    assert len(proc.stdout.splitlines()) == 4
    figures.add("hostile inputs tried: edge app CLI lines", len(args) + 4)
