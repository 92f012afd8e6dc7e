"""Tests of the on-device demo app edge/app.py (ai-edge-litert + sentencepiece + numpy, no TF).

The bundle comes from the fixture named by BUNDLE_FIXTURE; its Keras reference predictions from
the fixture named BUNDLE_FIXTURE + "_reference" ({"texts", "probabilities", "labels"}).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.edge.app_helpers import APP, REPO, REQUIREMENTS, app, run_app, run_blocked

BUNDLE_FIXTURE = "edge_bundle"  # from the debug pipeline run in tests/conftest.py

BUNDLE_FILES = ("model.tflite", "spm.model", "labels.txt")

EDGE_TEXTS = {
    "empty": "",
    "whitespace": " \t \n  ",
    "100kB": ("the bark of a small tree and the fur of a dog " * 2300)[:100_000],
    "non_ascii": "Größe der Blätter — ünïcødé 日本語のテキスト 🌳🐕",
}


@pytest.fixture
def bundle_dir(request) -> Path:
    return Path(request.getfixturevalue(BUNDLE_FIXTURE))


@pytest.fixture
def reference(request) -> dict:
    return request.getfixturevalue(BUNDLE_FIXTURE + "_reference")


@pytest.fixture
def bundle(bundle_dir):
    return app.load_bundle(bundle_dir)


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_clean_error(proc, code: int, *needles: str):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------- CLI modes


def test_cli_arguments(bundle_dir, bundle):
    texts = ["a small dog with long ears", "a tall tree with needles", "a tool for cutting wood"]
    proc = run_app("--bundle", bundle_dir, *texts)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    expected = bundle.classify(texts)
    for line, text, exp in zip(lines, texts, expected, strict=True):
        label, prob, latency, preview = line.split("\t")
        assert label == exp["label"] and label in bundle.labels
        assert float(prob) == pytest.approx(exp["probability"], abs=1e-4)
        assert float(latency) >= 0
        assert preview == text
    stats = [line for line in proc.stderr.splitlines() if line.startswith("latency_ms:")]
    assert len(stats) == 1
    for key in ("count=3", "mean=", "p50=", "p90=", "p99="):
        assert key in stats[0]


def test_cli_stdin_lines(bundle_dir, bundle):
    texts = ["a flowering plant", "", "a large fish of the sea"]
    proc = run_app("--bundle", bundle_dir, input="\n".join(texts) + "\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3  # one result per input line, an empty line included
    assert [line.split("\t")[0] for line in lines] == [r["label"] for r in bundle.classify(texts)]
    assert "count=3" in proc.stderr


def test_cli_jsonl(bundle_dir, bundle, tmp_path):
    records = [{"text": "a domestic cat", "id": 7}, "a bare json string", {"text": "an oak tree"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    proc = run_app("--bundle", bundle_dir, "--jsonl", src, "--output", out, "--top-k", 2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    texts = ["a domestic cat", "a bare json string", "an oak tree"]
    assert [r["text"] for r in results] == texts
    expected = bundle.classify(texts, top_k=2)
    for r, e in zip(results, expected, strict=True):
        assert set(r) == {"text", "label", "probability", "top_k", "latency_ms"}
        assert r["label"] == e["label"]
        assert r["probability"] == pytest.approx(e["probability"], abs=1e-6)
        assert [x[0] for x in r["top_k"]] == [x[0] for x in e["top_k"]]
        assert len(r["top_k"]) == 2 and r["latency_ms"] >= 0
    # same input from stdin ("-"), results to stdout
    proc = run_app("--bundle", bundle_dir, "--jsonl", "-", input=src.read_text(encoding="utf-8"))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["label"] for line in proc.stdout.splitlines()] == \
        [e["label"] for e in expected]


def test_cli_interactive_prompt(bundle_dir):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, str(APP), "--bundle", str(bundle_dir)],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        os.close(slave)
        os.write(master, b"a small dog\n\n")  # one text, then an empty line quits
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert out.startswith("> ")
    results = [part for part in out.split("> ") if "\t" in part]
    assert len(results) == 1 and results[0].rstrip("\n").endswith("\ta small dog")
    assert "count=1" in err


# --------------------------------------------------------------------------- library API


def test_top_k_ordering(bundle):
    n = bundle.num_classes
    for r in bundle.classify(["a tree", "a hammer", "a horse"], top_k=n):
        probs = [p for _, p in r["top_k"]]
        assert len(r["top_k"]) == n
        assert probs == sorted(probs, reverse=True)
        assert sorted(label for label, _ in r["top_k"]) == sorted(bundle.labels)
        assert r["top_k"][0] == [r["label"], r["probability"]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
    assert len(bundle.classify(["x"], top_k=n + 5)[0]["top_k"]) == n  # clamped
    assert len(bundle.classify(["x"])[0]["top_k"]) == 1  # default 1


def test_tokenize_contract(bundle):
    L, pad = bundle.max_sequence_length, bundle.pad_id
    ids = bundle.tokenize("a tree")
    assert ids.dtype == np.int32 and ids.shape == (L,)
    raw = bundle.processor.encode("a tree", out_type=int)
    assert list(ids[: len(raw)]) == raw and all(i == pad for i in ids[len(raw):])
    assert bundle.processor.bos_id() not in raw[:1] and bundle.processor.eos_id() not in raw[-1:]
    assert list(app.tokenize(bundle.processor, "", L, pad)) == [pad] * L
    long_ids = app.tokenize(bundle.processor, EDGE_TEXTS["100kB"], L, pad)
    assert list(long_ids) == bundle.processor.encode(EDGE_TEXTS["100kB"], out_type=int)[:L]


@pytest.mark.parametrize("name", list(EDGE_TEXTS))
def test_edge_case_texts_give_predictions(bundle, name):
    (r,) = bundle.classify([EDGE_TEXTS[name]], top_k=2)
    assert r["label"] in bundle.labels
    assert 0.0 <= r["probability"] <= 1.0
    assert r["text"] == EDGE_TEXTS[name]


def test_edge_case_texts_cli(bundle_dir, bundle, tmp_path):
    src = tmp_path / "edge.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                           for t in EDGE_TEXTS.values()), encoding="utf-8")
    proc = run_app("--bundle", bundle_dir, "--jsonl", src)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in results] == list(EDGE_TEXTS.values())
    assert [r["label"] for r in results] == \
        [r["label"] for r in bundle.classify(EDGE_TEXTS.values())]
    # plain mode with a 100 kB argument and a non-ASCII one: a preview, not the whole text
    proc = run_app("--bundle", bundle_dir, EDGE_TEXTS["100kB"], EDGE_TEXTS["non_ascii"], "", "   ")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(len(line) < 200 for line in lines)
    assert lines[1].endswith(EDGE_TEXTS["non_ascii"])


def test_predictions_match_keras(bundle, reference):
    labels = reference["labels"]
    assert labels == bundle.labels
    got = np.array([[dict(r["top_k"])[label] for label in labels]
                    for r in bundle.classify(reference["texts"], top_k=len(labels))])
    want = np.asarray(reference["probabilities"])
    assert got.shape == want.shape
    # dynamic-range quantization moves probabilities a little; argmax must agree wherever the
    # Keras model is not near a tie
    srt = np.sort(want, axis=1)
    clear = (srt[:, -1] - srt[:, -2]) > 0.05
    assert clear.sum() >= min(10, len(want))
    assert (got.argmax(1)[clear] == want.argmax(1)[clear]).all(), (got[clear], want[clear])
    assert np.abs(got - want).mean() < 0.05


def test_threads_option(bundle_dir):
    proc = run_app("--bundle", bundle_dir, "--threads", 1, "a tree")
    assert proc.returncode == 0, proc.stderr
    b = app.load_bundle(bundle_dir, num_threads=2)
    assert b.classify(["a tree"])[0]["label"] in b.labels


# --------------------------------------------------------------------------- bundle integrity


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_tampered_file_refused(bundle_dir, tmp_path, name):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    data = bytearray((b / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed
    (b / name).write_bytes(bytes(data))
    proc = run_app("--bundle", b, "a tree")
    assert_clean_error(proc, 2, name, "sha256")
    assert proc.stdout == ""
    with pytest.raises(app.BundleError, match=name.replace(".", r"\.")):
        app.load_bundle(b)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_missing_file_refused(bundle_dir, tmp_path, name):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    (b / name).unlink()
    proc = run_app("--bundle", b, "a tree")
    assert_clean_error(proc, 2, name, "missing")


@pytest.mark.parametrize("case", ["missing", "not_json", "no_files", "unlisted_model",
                                  "bad_version", "escaping_path", "no_max_len"])
def test_bad_manifest_refused(bundle_dir, tmp_path, case):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    path = b / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    if case == "missing":
        path.unlink()
    elif case == "not_json":
        path.write_text("{not json", encoding="utf-8")
    else:
        if case == "no_files":
            del m["files"]
        elif case == "unlisted_model":
            del m["files"][m["model"]]
        elif case == "bad_version":
            m["format_version"] = 99
        elif case == "escaping_path":
            m["labels"] = "../labels.txt"
        elif case == "no_max_len":
            del m["max_sequence_length"]
        path.write_text(json.dumps(m), encoding="utf-8")
    proc = run_app("--bundle", b, "a tree")
    line = assert_clean_error(proc, 2, "manifest")
    assert len(line) < 300


# --------------------------------------------------------------------------- tasks and runners

IDS_RUNNER = Path(__file__).resolve().parent / "ids_runner.py"


def model_signatures(model_path: Path) -> dict:
    """The manifest's "signatures" entry for a model, as export writes it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))

    def describe(name, detail):
        scale, zero_point = detail["quantization"]
        return {"name": name, "dtype": np.dtype(detail["dtype"]).name,
                "shape": [int(d) for d in detail.get("shape_signature", detail["shape"])],
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)}}

    out = {}
    for name in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(name)
        out[name] = {kind: {k: describe(k, d) for k, d in details.items()}
                     for kind, details in (("inputs", runner.get_input_details()),
                                           ("outputs", runner.get_output_details()))}
    return out


def rewrite_manifest(bundle: Path, drop_files=(), **changes) -> dict:
    """Apply changes to manifest.json (a None value deletes the key), delete drop_files and
    rewrite the sha256 of every remaining file."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    for name in drop_files:
        (bundle / name).unlink()
    for key, value in changes.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    m["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest()
                  for name in m["files"] if name not in drop_files}
    path.write_text(json.dumps(m, indent=2), encoding="utf-8")
    return m


def load_ids_runner():
    """tests/edge/ids_runner.py, imported once (it registers the task token_ids_demo)."""
    if "ids_runner" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ids_runner", IDS_RUNNER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["ids_runner"] = module
        spec.loader.exec_module(module)
    return sys.modules["ids_runner"]


@pytest.fixture
def ids_bundle(bundle_dir, tmp_path) -> Path:
    """The debug bundle as a token_ids_demo bundle: no labels file, a signatures entry."""
    b = copy_bundle(bundle_dir, tmp_path / "ids_bundle")
    rewrite_manifest(b, drop_files=("labels.txt",), task="token_ids_demo", labels=None,
                     signatures=model_signatures(b / "model.tflite"))
    return b


def test_unknown_task_is_refused_naming_the_supported_tasks(bundle_dir, tmp_path):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    rewrite_manifest(b, task="speech_to_text")
    line = assert_clean_error(run_app("--bundle", b, "a tree"), 2, "'speech_to_text'",
                              "text_classification", "manifest.json")
    assert "unsupported task" in line
    with pytest.raises(app.BundleError, match=r"unsupported task 'speech_to_text' "
                                              r"\(this app runs: .*text_classification"):
        app.load_bundle(b)
    with pytest.raises(app.BundleError, match="speech_to_text"):
        app.runner_class("speech_to_text")
    assert app.runner_class("text_classification") is app.Bundle


def test_registered_runner_is_dispatched_by_the_manifest_task(ids_bundle, bundle):
    module = load_ids_runner()
    assert "token_ids_demo" in app.supported_tasks()
    runner = app.load_bundle(ids_bundle, demo_max_ids=0)
    assert type(runner) is module.TokenIdsRunner and runner.task == "token_ids_demo"
    assert runner.manifest.task == "token_ids_demo"
    assert set(runner.manifest.signatures) == {"serving_default"}
    assert runner.signature_names == ["serving_default"]
    texts = ["a small dog with long ears", "an oak tree", ""]
    for text, expected in zip(texts, bundle.classify(texts), strict=True):
        result = runner.run(text)
        assert list(result) == ["text", "token_ids", "class_id", "latency_ms"]
        assert result["token_ids"] == bundle.processor.encode(text, out_type=int)[
            : bundle.max_sequence_length]
        assert bundle.labels[result["class_id"]] == expected["label"]
        assert result["latency_ms"] >= 0
        assert runner.format(result).endswith("\t" + text)
    assert runner.stats()["count"] == 3
    with pytest.raises(app.BundleError, match="no signature 'decode'"):
        runner.signature("decode")
    # the plain app has no runner for the task: a clear refusal
    assert_clean_error(run_app("--bundle", ids_bundle, "a tree"), 2, "'token_ids_demo'",
                       "text_classification")


def test_registered_runner_through_the_cli(ids_bundle, bundle):
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(APP.parent)!r})
        import app
        spec = importlib.util.spec_from_file_location("ids_runner", {str(IDS_RUNNER)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.exit(app.main(sys.argv[1:]))
    """)
    texts = ["a small dog with long ears", "an oak tree"]
    ids = [bundle.processor.encode(t, out_type=int) for t in texts]
    proc = subprocess.run([sys.executable, "-c", script, "--bundle", str(ids_bundle), "--json",
                           "--demo-max-ids", "2", *texts], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in results] == texts
    assert [r["token_ids"] for r in results] == [i[:2] for i in ids]
    assert [bundle.labels[r["class_id"]] for r in results] == \
        [r["label"] for r in bundle.classify(texts)]
    assert "count=2" in proc.stderr
    # plain output (the runner's format), texts from stdin
    proc = subprocess.run([sys.executable, "-c", script, "--bundle", str(ids_bundle)],
                          input="\n".join(texts) + "\n", capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("ids=[") and lines[1].endswith("\tan oak tree")


def test_runner_registry_rejects_conflicts():
    module = load_ids_runner()
    app.register_runner("token_ids_demo", module.TokenIdsRunner)   # the same class again: ok

    class Other(app.Runner):
        pass

    with pytest.raises(ValueError, match="already runs with TokenIdsRunner"):
        app.register_runner("token_ids_demo", Other)
    with pytest.raises(TypeError, match="Runner subclass"):
        app.register_runner("x_task", object)
    with pytest.raises(ValueError, match="non-empty"):
        app.register_runner("", Other)


def test_manifest_signatures_are_optional_and_exposed(bundle_dir, tmp_path, bundle):
    old = app.read_manifest(bundle_dir)
    if "signatures" not in old.raw:   # a bundle from before export wrote signatures
        assert old.signatures is None
    b = copy_bundle(bundle_dir, tmp_path / "b")
    signatures = model_signatures(b / "model.tflite")
    rewrite_manifest(b, signatures=signatures)
    manifest = app.read_manifest(b)
    assert manifest.signatures == signatures and manifest.task == "text_classification"
    runner = app.load_bundle(b)
    assert runner.classify(["an oak tree"])[0]["label"] == \
        bundle.classify(["an oak tree"])[0]["label"]


BAD_SIGNATURES = {
    "not_a_dict": ([], "signatures must map signature names"),
    "empty": ({}, "signatures must map signature names"),
    "entry_not_a_dict": ({"serving_default": [1]}, "signatures['serving_default'] must be"),
    "no_outputs": ({"serving_default": {"inputs": {}}},
                   "signatures['serving_default'].outputs must map tensor names"),
    "tensor_not_a_dict": ({"serving_default": {"inputs": {"token_ids": "int32"}, "outputs": {}}},
                          ".inputs['token_ids'] must be an object"),
    "bad_dtype": ({"serving_default": {"inputs": {"token_ids": {"dtype": "int33", "shape": []}},
                                       "outputs": {}}}, ".inputs['token_ids'].dtype"),
    "bad_shape": ({"serving_default": {"inputs": {"token_ids": {"dtype": "int32",
                                                                "shape": "1x32"}},
                                       "outputs": {}}}, ".inputs['token_ids'].shape"),
    "bad_quantization": ({"serving_default": {"inputs": {}, "outputs": {"probabilities": {
        "dtype": "float32", "shape": [1, 26], "quantization": {"scale": "x"}}}}},
        ".outputs['probabilities'].quantization"),
}


@pytest.mark.parametrize("case", sorted(BAD_SIGNATURES))
def test_bad_manifest_signatures_are_refused(bundle_dir, tmp_path, case):
    value, needle = BAD_SIGNATURES[case]
    b = copy_bundle(bundle_dir, tmp_path / "b")
    rewrite_manifest(b, signatures=value)
    with pytest.raises(app.BundleError, match=re.escape(needle)):
        app.read_manifest(b)
    line = assert_clean_error(run_app("--bundle", b, "a tree"), 2, "manifest.json", needle)
    assert len(line) < 300


@pytest.mark.parametrize("case", ["unknown_signature", "tensor_name", "dtype"])
def test_manifest_signatures_must_match_the_model(bundle_dir, tmp_path, case):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    signatures = model_signatures(b / "model.tflite")
    spec = signatures["serving_default"]
    if case == "unknown_signature":
        signatures["decode"] = spec
        needle = "no signature 'decode'"
    elif case == "tensor_name":
        spec["inputs"]["ids"] = spec["inputs"].pop("token_ids")
        needle = "signature 'serving_default' inputs ['ids'] are not"
    else:
        spec["outputs"]["probabilities"]["dtype"] = "int8"
        needle = "output 'probabilities' is int8 but model.tflite's is float32"
    rewrite_manifest(b, signatures=signatures)
    app.read_manifest(b)   # well-formed: the model decides
    with pytest.raises(app.BundleError, match=re.escape(needle)):
        app.load_bundle(b)
    assert_clean_error(run_app("--bundle", b, "a tree"), 2, needle)


def test_missing_bundle_dir(tmp_path):
    assert_clean_error(run_app("--bundle", tmp_path / "nope", "x"), 2, "not found")


def test_malformed_jsonl_lines(bundle_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "a tree"}\n{broken\n\n[1, 2]\n{"label": 3}\n"a dog"\n{"text": 5}\n',
                   encoding="utf-8")
    proc = run_app("--bundle", bundle_dir, "--jsonl", src)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # the rest still runs
    assert [json.loads(line)["text"] for line in proc.stdout.splitlines()] == ["a tree", "a dog"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    for lineno in (2, 4, 5, 7):
        assert any(f"line {lineno}:" in e for e in errors), (lineno, errors)
    assert not any("line 3:" in e for e in errors)  # blank lines are ignored
    assert "4 malformed line(s)" in proc.stderr


def test_usage_errors(bundle_dir):
    for args in (["--top-k", "0", "x"], ["--jsonl", "f.jsonl", "x"]):
        proc = run_app("--bundle", bundle_dir, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- runtime and imports

def test_never_imports_tensorflow(bundle_dir):
    proc = run_blocked(["tensorflow", "keras", "tf_keras"],
                       ["--bundle", bundle_dir, "--top-k", "2", "a tree"])
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY_MODULES=\n" in proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_runtime_missing_message(bundle_dir, tmp_path):
    proc = run_blocked(["ai_edge_litert", "tflite_runtime"], ["--bundle", bundle_dir, "a tree"])
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    assert "pip install -r edge/requirements.txt" in proc.stderr


def test_tflite_runtime_fallback_only_for_float(monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    fake_pkg = type(sys)("tflite_runtime")
    fake_mod = type(sys)("tflite_runtime.interpreter")
    fake_mod.Interpreter = Interpreter
    fake_pkg.interpreter = fake_mod
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake_pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake_mod)
    for variant in ("float32", "float16"):
        assert app._import_interpreter(variant) == (Interpreter, "tflite_runtime")
    for variant in ("dynamic_range", "int8"):
        with pytest.raises(app.RuntimeMissingError, match="pip install -r edge/requirements.txt"):
            app._import_interpreter(variant)


def test_requirements_pins():
    reqs = [line.strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    names = {r.split("==")[0].lower() for r in reqs}
    assert names == {"ai-edge-litert", "sentencepiece", "numpy", "pillow"}
    assert all("==" in r for r in reqs)
    assert "ai-edge-litert==2.3.0" in reqs


@pytest.mark.slow
def test_clean_venv_from_requirements(bundle_dir, bundle, tmp_path, edge_venv):
    """A fresh venv with edge/requirements.txt alone (tensorflow not importable there: the
    `edge_venv` fixture checks it) runs the app."""
    py = edge_venv
    texts = ["a small dog", "an oak tree", "a hammer", *EDGE_TEXTS.values()]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts),
                   encoding="utf-8")
    proc = run_app("--bundle", bundle_dir, "--jsonl", src, "--top-k", 3, python=py, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    want = bundle.classify(texts, top_k=3)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)
        assert [x[0] for x in g["top_k"]] == [x[0] for x in w["top_k"]]
