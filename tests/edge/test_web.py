"""The web app (edge/web): the bundles of the debug runs in a real browser, offline.

Debian's chromium (installed by `make setup`) is driven by Playwright (the Python package,
which ships its own driver; no browser download) and opens the page that
`python -m edge.web` serves. Every request that does not go to the local server is
aborted and counted: the page must need none. One browser per session; each test opens
its own page (a fresh context) on its own server thread.

Set EDGE_WEB_SCREENSHOT=docs/images/web_classification.png to have the classification test
write its screenshot there (it always writes one under the test's tmp_path).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.web.measure import CHROMIUM, CHROMIUM_ARGS, litert_figures, page_figures
from edge.web.server import NPM_PACKAGES, missing_npm_packages, serve_in_thread
from tests.conftest import HOSTILE_TEXTS
from tests.edge.app_helpers import REPO, app

LOAD_TIMEOUT_MS = 60_000


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium under Playwright, once per session (a fresh profile each launch:
    Playwright gives every launch a new temporary user-data-dir)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is not installed: run `make setup` (apt-get install "
                    "chromium)")
    missing = missing_npm_packages()
    if missing:
        pytest.fail(f"npm packages missing in edge/web: {missing}; run `make setup`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A page of the web app on `bundle_dir`: .page (Playwright's), .url, .outside (the
    requests that did not go to the local server, aborted), .errors (uncaught JS
    errors)."""

    def __init__(self, browser, bundle_dir):
        self.server, self.url = serve_in_thread(bundle_dir)
        self.context = browser.new_context()
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route):
        if route.request.url.startswith(self.url):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def load(self) -> str:
        """Opens the page and waits until it is ready or shows an error: the state."""
        self.started = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_function("document.body.dataset.state !== 'loading'",
                                    timeout=LOAD_TIMEOUT_MS)
        self.load_seconds = time.perf_counter() - self.started
        return self.page.evaluate("document.body.dataset.state")

    def ready(self) -> Page:
        state = self.load()
        assert state == "ready", self.page.inner_text("#error")
        return self

    def evaluate(self, script, arg=None):
        return self.page.evaluate(script, arg)

    def close(self):
        self.context.close()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def web_page(browser, bundle_dir):
    page = Page(browser, bundle_dir)
    try:
        yield page
        assert page.outside == [], f"the page reached outside: {page.outside}"
        assert page.errors == [], page.errors
    finally:
        page.close()


def python_runner(bundle_dir, **options):
    """The Python edge app's runner of the same bundle (ai-edge-litert), 1 thread."""
    return app.load_bundle(bundle_dir, num_threads=1, options=options)


# --------------------------------------------------------------------------- server


def http_get(url: str, path: str, method: str = "GET"):
    host, port = url.split("//")[1].rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(method, path)   # the path goes out as written (no normalising)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type"), body


def test_server_serves_page_npm_files_and_bundle_read_only(edge_bundle, tmp_path):
    server, url = serve_in_thread(edge_bundle)
    try:
        status, kind, body = http_get(url, "/")
        assert status == 200 and kind.startswith("text/html") and b"importmap" in body
        status, kind, body = http_get(url, "/node_modules/@litertjs/core/wasm/"
                                           "litert_wasm_internal.wasm")
        assert status == 200 and kind == "application/wasm" and body[:4] == b"\0asm"
        status, kind, _ = http_get(url, "/static/main.js")
        assert status == 200 and kind.startswith("text/javascript")
        status, kind, body = http_get(url, "/bundle/manifest.json")
        assert status == 200 and kind == "application/json"
        assert json.loads(body)["task"] == "text_classification"
        status, _, body = http_get(url, "/bundle/model.tflite")
        assert status == 200 and body == (Path(edge_bundle) / "model.tflite").read_bytes()
        assert json.loads(http_get(url, "/server.json")[2]) == {
            "bundle": str(Path(edge_bundle).resolve())}
        for path in ["/bundle/../manifest.json", "/bundle/..%2f..%2fconfig.yaml",
                     "/static/../server.py", "/static/%2e%2e/server.py",
                     "/node_modules/app-root-path/package.json",   # not a page package
                     "/node_modules/@litertjs/core/../../package.json",
                     "/bundle/%00", "/etc/passwd", "/bundle/nope.txt", "/bundle/"]:
            assert http_get(url, path)[0] == 404, path
        assert http_get(url, "/bundle/manifest.json", method="POST")[0] == 405
        assert http_get(url, "/bundle/manifest.json", method="HEAD")[0] == 200
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_prints_the_url_and_refuses_without_npm_packages(edge_bundle, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "edge.web", "--bundle", str(edge_bundle),
                             "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ") and " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].strip()
        assert http_get(url, "/bundle/manifest.json")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert set(NPM_PACKAGES) <= set(json.loads(
        (REPO / "edge" / "web" / "package.json").read_text())["dependencies"])
    assert missing_npm_packages(tmp_path) == list(NPM_PACKAGES)


# --------------------------------------------------------------------------- classification


@pytest.fixture(scope="module")
def classification(debug_run, debug_splits, saved_model_dir):
    """The debug run's test texts and the SavedModel's probabilities of them."""
    import tensorflow as tf

    texts = [str(t) for t in debug_splits.texts["test"]]
    loaded = tf.saved_model.load(saved_model_dir)
    out = loaded.signatures["serving_default"](text=tf.constant(texts[:200]))
    return {"texts": texts, "saved_probabilities": out["probabilities"].numpy(),
            "saved_labels": [b.decode() for b in out["label"].numpy()]}


@pytest.fixture(scope="module")
def classification_page(browser, edge_bundle):
    with web_page(browser, edge_bundle) as page:
        page.ready()
        yield page


def test_page_classifies_a_typed_sentence_like_the_saved_model(classification_page,
                                                               classification, edge_bundle,
                                                               tmp_path):
    # The bundle's signature has a -1 batch, which LiteRT.js cannot resize: the page
    # runs it through static/lib/tflite.js (the batch fixed to 1).
    manifest = json.loads((Path(edge_bundle) / "manifest.json").read_text())
    assert manifest["signatures"]["serving_default"]["inputs"]["token_ids"]["shape"][0] == -1
    page = classification_page.page
    # The first test text on which the SavedModel is clear (top-1 ahead by 0.1): the
    # SavedModel and the quantized bundle may differ on a near tie.
    probabilities = classification["saved_probabilities"]
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    i = int(np.argmax(top2[:, 1] - top2[:, 0] > 0.1))
    text, expected = classification["texts"][i], classification["saved_labels"][i]
    page.fill("#text", "")
    page.locator("#text").press_sequentially(text)
    runs = page.evaluate("document.getElementById('task').dataset.runs ?? '0'")
    page.click("#run")
    page.wait_for_function(f"document.getElementById('task').dataset.runs !== '{runs}'")
    assert page.inner_text("#label") == expected
    assert page.locator("#bars .bar-row").count() == 5
    latency = page.inner_text("#latency")
    assert "tokenization" in latency and "inference" in latency
    shot = tmp_path / "web_classification.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("EDGE_WEB_SCREENSHOT"):
        shutil.copyfile(shot, REPO / os.environ["EDGE_WEB_SCREENSHOT"])


def test_token_ids_equal_sentencepiece_on_the_whole_test_split(classification_page,
                                                               classification, edge_bundle):
    texts = classification["texts"] + HOSTILE_TEXTS + [
        "e\u0301t\u00e9 \ufb01 \u2163 Ａ１", "tab\there  two  spaces", "\u00a0",
        # max_text_bytes falls inside a 2-, 3- or 4-byte character: U+FFFD there
        "a" + "\u00e4" * 5000, "ab" + "\u65e5" * 5000, "abc" + "\U0001f642" * 5000]
    runner = python_runner(edge_bundle)
    tokenizer = runner.tokenizer
    page_ids = classification_page.evaluate(
        "texts => window.edgeApp.runner.encodeBatch(texts)", texts)
    page_rows = classification_page.evaluate(
        "texts => window.edgeApp.runner.encodeBatch(texts, true)", texts)
    limit = tokenizer.max_text_bytes
    expected = [tokenizer.processor.encode(
        t.encode()[:limit].decode("utf-8", "replace"), out_type=int) for t in texts]
    assert len(classification["texts"]) >= 100
    assert page_ids == expected
    assert page_rows == [tokenizer(t).tolist() for t in texts]


def with_model(bundle, tflite, directory, variant):
    """A copy of `bundle` whose model.tflite is `tflite` (the manifest's sha256, variant
    and signatures updated, as export.bundle writes them)."""
    from export.tflite import signature_details

    shutil.copytree(bundle, directory)
    shutil.copyfile(tflite, directory / "model.tflite")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["model.tflite"] = hashlib.sha256(
        (directory / "model.tflite").read_bytes()).hexdigest()
    manifest["variant"] = variant
    manifest["signatures"] = signature_details(str(directory / "model.tflite"))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def page_and_litert_probabilities(page, bundle, texts):
    runner = python_runner(bundle)
    expected = np.stack([runner.predict(runner.tokenize(t)[None])[0] for t in texts])
    got = np.array(page.evaluate("texts => window.edgeApp.runner.probabilitiesBatch(texts)",
                                 texts))
    assert got.shape == expected.shape == (len(texts), runner.num_classes)
    return got, expected


def test_probabilities_equal_ai_edge_litert_within_1e_5(browser, classification, edge_bundle,
                                                        tmp_path):
    """The float32 export of the debug run: every one of 128 test texts (and the hostile
    ones) within 1e-5 of ai-edge-litert."""
    texts = classification["texts"][:128] + HOSTILE_TEXTS
    float32 = with_model(edge_bundle, Path(edge_bundle).parent / "float32.tflite",
                         tmp_path / "float32", "float32")
    with web_page(browser, float32) as page:
        page.ready()
        got, expected = page_and_litert_probabilities(page, float32, texts)
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_quantized_bundle_probabilities_agree_with_ai_edge_litert(classification_page,
                                                                  classification,
                                                                  edge_bundle):
    """The bundle itself (dynamic_range in the debug run). Its activations are quantized at
    run time, and a float rounding that differs between the x86 kernels and the WASM
    SIMD ones can move one int8 step: measured here, 131 of 133 texts within 1e-5, the
    others within 6e-5."""
    texts = classification["texts"][:128] + HOSTILE_TEXTS
    got, expected = page_and_litert_probabilities(classification_page, edge_bundle, texts)
    within = (np.abs(got - expected).max(1) <= 1e-5).mean()
    assert within >= 0.95, within
    assert np.abs(got - expected).max() <= 2e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_page_figures(classification_page, edge_bundle, capsys):
    """Page load, download size and per-text latency against ai-edge-litert (printed and
    loosely checked; `python -m edge.web.measure` gives the README's figures)."""
    page = page_figures(classification_page, runs=100)
    litert = litert_figures(edge_bundle, runs=100)
    with capsys.disabled():
        print(f"\n[web figures] page ready {page['ready_ms']:.0f} ms after navigation; "
              f"{page['download_bytes'] / 1e6:.2f} MB downloaded; per text: browser "
              f"{page['tokenize_ms']:.3f} + {page['inference_ms']:.3f} ms, ai-edge-litert "
              f"{litert['tokenize_ms']:.3f} + {litert['inference_ms']:.3f} ms")
    assert 0 < page["per_text_mean_ms"] < 100 and 5e6 < page["download_bytes"] < 30e6
    assert page["ready_ms"] < 30_000


# --------------------------------------------------------------------------- errors


def broken_bundle(source, tmp_path, how):
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    if how == "modified":
        with open(bundle / "spm.model", "ab") as f:
            f.write(b"\0")
    elif how == "file missing":
        (bundle / "labels.txt").unlink()
    elif how == "no bundle":
        shutil.rmtree(bundle)
    elif how == "unsupported task":
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["task"] = "speech_recognition"
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    elif how in ("not a model", "not a tokenizer"):
        name = "model.tflite" if how == "not a model" else "spm.model"
        (bundle / name).write_bytes(b"not what it should be" * 8)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("how, words", [
    ("modified", ["Hash mismatch", "spm.model", "sha256"]),
    ("file missing", ["Bundle file missing", "labels.txt"]),
    ("no bundle", ["Bundle missing", "manifest.json"]),
    ("unsupported task", ["Unsupported task", "speech_recognition", "text_classification"]),
    ("not a model", ["Unsupported model", "model.tflite"]),
    ("not a tokenizer", ["Unsupported tokenizer", "spm.model"]),
])
def test_page_shows_bundle_errors_in_words(browser, edge_bundle, tmp_path, how, words):
    bundle = broken_bundle(edge_bundle, tmp_path, how)
    page = Page(browser, bundle)
    try:
        assert page.load() == "error"
        box = page.page.locator("#error")
        assert box.is_visible()
        message = box.inner_text()
        for word in words:
            assert word in message, message
        assert page.page.locator("#task").inner_text() == ""
        assert page.outside == []
    finally:
        page.close()


# --------------------------------------------------------------------------- other tasks


def click_and_wait(page, selector="#run"):
    """Clicks `selector` (or runs `selector` when it is a callable) and waits for the task
    to finish one more run."""
    runs = page.evaluate("document.getElementById('task').dataset.runs ?? '0'")
    if callable(selector):
        selector()
    else:
        page.click(selector)
    page.wait_for_function(f"document.getElementById('task').dataset.runs !== '{runs}'",
                           timeout=LOAD_TIMEOUT_MS)
    assert page.inner_text("#task-error") == ""


WATCH_OUTPUT = """() => {
    window.outputs = [];
    new MutationObserver(() => window.outputs.push(
        document.getElementById('output').textContent)).observe(
        document.getElementById('output'), {childList: true, characterData: true,
                                            subtree: true});
}"""


TRANSLATION_SENTENCES = ["Der Hund schläft im Haus.", "Ich habe keine Zeit für so etwas.",
                         "", "ä" * 5_000, "Ärger über Öl — 日本語 🙂"]


@pytest.mark.slow   # needs the trained debug run of the task
def test_translation_page_streams_the_python_apps_translation(browser, translation_run):
    import tensorflow as tf

    bundle = translation_run[1]["artifacts"]["edge_bundle"]
    runner = python_runner(bundle)
    expected = [runner.run(t) for t in TRANSLATION_SENTENCES]
    saved = tf.saved_model.load(translation_run[1]["artifacts"]["saved_model"])
    served = saved.signatures["serving_default"](
        text=tf.constant(TRANSLATION_SENTENCES[:1]))["translation"].numpy()[0].decode()
    with web_page(browser, bundle) as page:
        page.ready()
        p = page.page
        p.fill("#text", "")
        p.locator("#text").press_sequentially(TRANSLATION_SENTENCES[0])
        p.evaluate(WATCH_OUTPUT)
        click_and_wait(p)
        assert p.inner_text("#output") == expected[0]["translation"] == served
        outputs = p.evaluate("window.outputs")
        assert outputs[-1] == expected[0]["translation"]
        assert "tokens" in p.inner_text("#latency")
        results = page.evaluate("""async texts => {
            const out = [];
            for (const t of texts) out.push(await window.edgeApp.runner.translate(t));
            return out;
        }""", TRANSLATION_SENTENCES)
    assert [r["tokenIds"] for r in results] == [e["token_ids"] for e in expected]
    assert [r["translation"] for r in results] == [e["translation"] for e in expected]


LM_PROMPTS = ["The secret of", "", "Never", "ä" * 5_000, "Ärger über Öl — 日本語 🙂"]


@pytest.mark.slow   # needs the trained debug run of the task
def test_language_model_page_streams_the_python_apps_greedy_text(browser, lm_run):
    import tensorflow as tf

    bundle = lm_run[1]["artifacts"]["edge_bundle"]
    runner = python_runner(bundle)
    new_tokens = 12
    expected = [runner.run(p, strategy="greedy", max_new_tokens=new_tokens)
                for p in LM_PROMPTS]
    saved = tf.saved_model.load(lm_run[1]["artifacts"]["saved_model"])
    served = saved.signatures["generate"](
        prompt=tf.constant(LM_PROMPTS[:1]), max_new_tokens=tf.constant(new_tokens),
        temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
        seed=tf.constant(0))
    served_text = served["text"].numpy()[0].decode()
    with web_page(browser, bundle) as page:
        page.ready()
        p = page.page
        p.fill("#text", LM_PROMPTS[0])
        p.select_option("#strategy", "greedy")
        p.fill("#max-new-tokens", str(new_tokens))
        p.evaluate(WATCH_OUTPUT)
        click_and_wait(p)
        assert p.inner_text("#output") == expected[0]["generated_text"]
        # The text grew token by token: the prompt, then one more piece per id.
        outputs = p.evaluate("window.outputs")
        assert len(set(outputs)) >= min(3, len(expected[0]["token_ids"]))
        assert "tokens/s" in p.inner_text("#latency")
        results = page.evaluate("""async ([prompts, n]) => {
            const out = [];
            for (const t of prompts) {
                out.push(await window.edgeApp.runner.generate(
                    t, {strategy: 'greedy', max_new_tokens: n}));
            }
            return out;
        }""", [LM_PROMPTS, new_tokens])
        sampled = page.evaluate("""async ([prompt, n]) => {
            const out = [];
            for (const seed of [7, 7, 8]) {
                out.push((await window.edgeApp.runner.generate(prompt, {
                    strategy: 'top_p', temperature: 1.0, top_p: 0.9, seed,
                    max_new_tokens: n})).tokenIds);
            }
            return out;
        }""", [LM_PROMPTS[0], new_tokens])
    assert [r["tokenIds"] for r in results] == [e["token_ids"] for e in expected]
    assert [r["generatedText"] for r in results] == [e["generated_text"] for e in expected]
    assert results[0]["generatedText"] == served_text
    # Sampling in the page: the same seed gives the same ids, another seed may not.
    assert sampled[0] == sampled[1] and all(0 < len(ids) <= new_tokens for ids in sampled)


@pytest.mark.slow   # needs the trained debug run of the task
def test_image_page_classifies_a_picked_png_like_the_saved_model(browser, image_run,
                                                                  image_trained, tmp_path):
    import tensorflow as tf
    from PIL import Image

    bundle = image_run[1]["artifacts"]["edge_bundle"]
    task, _ = image_trained
    images = task.splits.images["test"][:32]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(image[..., 0]).save(paths[-1])
    # RGB images of other sizes: decoding, grey conversion and bilinear resize in the page.
    big = tmp_path / "big_rgb.png"
    Image.fromarray(images[0][..., 0]).convert("RGB").resize((56, 42)).save(big)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(images[1][..., 0]).convert("RGB").resize((70, 50)).save(jpeg, quality=90)
    saved = tf.saved_model.load(image_run[1]["artifacts"]["saved_model"])
    served = [s.decode() for s in saved.signatures["serving_default"](
        image_bytes=tf.constant([p.read_bytes() for p in paths[:3]]))["label"].numpy()]
    runner = python_runner(bundle)
    with web_page(browser, bundle) as page:
        page.ready()
        p = page.page
        for path, label in zip(paths[:3], served):
            click_and_wait(p, lambda path=path: p.set_input_files("#image", str(path)))
            assert p.inner_text("#label") == label
            assert p.locator("#bars .bar-row").count() == 5
        for path in (big, jpeg):
            click_and_wait(p, lambda path=path: p.set_input_files("#image", str(path)))
            pixels = page.evaluate("Array.from(window.edgeApp.runner.last.pixels)")
            assert pixels == runner.pixels(path).reshape(-1).astype(int).tolist()
            assert p.inner_text("#label") == runner.run(str(path))["label"]
        notes = tmp_path / "notes.png"
        notes.write_text("not an image")
        p.set_input_files("#image", str(notes))
        p.wait_for_function("document.getElementById('task-error').textContent !== ''")
        assert "notes.png is not a PNG or JPEG image" in p.inner_text("#task-error")
        got = np.array(page.evaluate(
            "rows => window.edgeApp.runner.probabilitiesBatch(rows)",
            [img.reshape(-1).tolist() for img in images]))
    expected = np.stack([runner.predict(img[None].astype(np.float32))[0] for img in images])
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-4

    # The full-int8 variant: uint8 pixels quantized with the manifest's parameters.
    int8 = with_model(bundle, Path(bundle).parent / "int8.tflite", tmp_path / "int8", "int8")
    manifest = json.loads((int8 / "manifest.json").read_text())
    assert manifest["signatures"]["serving_default"]["inputs"]["pixels"]["dtype"] == "uint8"
    runner = python_runner(int8)
    expected = np.stack([runner.predict(img[None].astype(np.float32))[0] for img in images])
    with web_page(browser, int8) as page:
        page.ready()
        got = np.array(page.evaluate(
            "rows => window.edgeApp.runner.probabilitiesBatch(rows)",
            [img.reshape(-1).tolist() for img in images]))
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() <= 1e-4
