"""The web app (edge/web): the bundles of the debug runs in a real browser, offline.

Debian's chromium (installed by `make setup`) is driven by Playwright (the Python package,
which ships its own driver; no browser download) and opens the page that
`python -m edge.web` serves. Every request that does not go to the local server is
aborted and counted: the page must need none. One browser per session; each test opens
its own page (a fresh context) on its own server thread.

Set EDGE_WEB_SCREENSHOT=docs/web_classification.png to have the classification test
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

from edge.web.server import NPM_PACKAGES, missing_npm_packages, serve_in_thread
from tests.conftest import HOSTILE_TEXTS
from tests.edge.app_helpers import REPO, app

CHROMIUM = "/usr/bin/chromium"
# Without these, chromium reaches for the network on its own (updates, sync, QUIC).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
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
def classification(debug_run, debug_splits, saved_model_dir, edge_bundle):
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
                                                               classification, tmp_path):
    page = classification_page.page
    # The first test text on which the SavedModel is clear (top-1 ahead by 0.1): the
    # bfloat16 Keras model and the float exports may differ on a near tie.
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
    texts = classification["texts"] + HOSTILE_TEXTS + ["e\u0301t\u00e9 \ufb01 \u2163 Ａ１",
                                                       "tab\there  two  spaces", "\u00a0"]
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


def test_probabilities_equal_ai_edge_litert_within_1e_5(classification_page, classification,
                                                        edge_bundle):
    texts = classification["texts"][:128] + HOSTILE_TEXTS
    runner = python_runner(edge_bundle)
    expected = np.stack([runner.predict(runner.tokenize(t)[None])[0] for t in texts])
    page = np.array(classification_page.evaluate(
        "texts => window.edgeApp.runner.probabilitiesBatch(texts)", texts))
    assert page.shape == expected.shape == (len(texts), runner.num_classes)
    assert np.abs(page - expected).max() <= 1e-5
    assert (page.argmax(1) == expected.argmax(1)).all()


def test_page_figures(classification_page, edge_bundle, capsys):
    """Page load and per-inference latency against ai-edge-litert (printed, loosely
    checked: figures for the README)."""
    figures = classification_page.evaluate("""async () => {
        const r = window.edgeApp.runner;
        const text = 'a small domesticated carnivorous mammal with soft fur';
        for (let i = 0; i < 20; i++) await r.classify(text);
        const n = 200, t0 = performance.now();
        for (let i = 0; i < n; i++) await r.predict(r.tokenizer.tokenize(text));
        const perCall = (performance.now() - t0) / n;
        const bytes = performance.getEntriesByType('resource')
            .concat(performance.getEntriesByType('navigation'))
            .reduce((s, e) => s + (e.encodedBodySize || 0), 0);
        return {readyMs: window.edgeApp.readyMs, perCallMs: perCall, bytes};
    }""")
    runner = python_runner(edge_bundle)
    ids = runner.tokenize("a small domesticated carnivorous mammal with soft fur")[None]
    for _ in range(20):
        runner.predict(ids)
    start = time.perf_counter()
    for _ in range(200):
        runner.predict(ids)
    litert_ms = (time.perf_counter() - start) / 200 * 1000
    with capsys.disabled():
        print(f"\n[web figures] page ready {figures['readyMs']:.0f} ms after navigation; "
              f"downloaded {figures['bytes'] / 1e6:.2f} MB; per inference (tokenize + "
              f"run) browser {figures['perCallMs']:.3f} ms vs ai-edge-litert "
              f"{litert_ms:.3f} ms (1 thread)")
    assert 0 < figures["perCallMs"] < 100 and figures["bytes"] > 5e6


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
    elif how == "not a model":
        (bundle / "model.tflite").write_bytes(b"not a flatbuffer at all" * 8)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["files"]["model.tflite"] = hashlib.sha256(
            (bundle / "model.tflite").read_bytes()).hexdigest()
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("how, words", [
    ("modified", ["Hash mismatch", "spm.model", "sha256"]),
    ("file missing", ["Bundle file missing", "labels.txt"]),
    ("no bundle", ["Bundle missing", "manifest.json"]),
    ("unsupported task", ["Unsupported task", "speech_recognition", "text_classification"]),
    ("not a model", ["Unsupported model", "model.tflite"]),
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
