"""python -m edge.web.measure --bundle DIR: the web app's figures for a bundle, in Debian's
chromium (headless, offline) against the Python edge app.

Prints (and returns as a dict): the page's load time (navigation to ready: manifest,
sha256 of every file, LiteRT.js WASM, model, tokenizer), the bytes it downloaded, and
the latency in the page (LiteRT.js, 1 thread) and in ai-edge-litert (1 thread): for a
text_classification bundle the per-text tokenization and inference (batch 1, medians of
`runs` calls after a warm-up); for translation and language_modeling bundles the
milliseconds per generated token (greedy, whole loop, median of `runs` // 20 texts).
Needs Playwright (requirements.txt) and /usr/bin/chromium (`make setup`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edge.web.server import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
# Without these chromium reaches for the network on its own (updates, sync, QUIC).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TEXT = "dog, domestic dog: a member of the genus Canis that has been domesticated by man"

PAGE_FIGURES = """async ([text, runs]) => {
    const r = window.edgeApp.runner;
    const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
    for (let i = 0; i < 20; i++) await r.classify(text);
    const tok = [], inf = [];
    for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        const ids = r.tokenizer.tokenize(text);
        const t1 = performance.now();
        await r.predict(ids);
        tok.push(t1 - t0);
        inf.push(performance.now() - t1);
    }
    // performance.now() is coarse (0.1 ms without cross-origin isolation): the mean of a
    // timed block of calls too.
    const t0 = performance.now();
    for (let i = 0; i < runs; i++) await r.predict(r.tokenizer.tokenize(text));
    const meanMs = (performance.now() - t0) / runs;
    const entries = performance.getEntriesByType('resource')
        .concat(performance.getEntriesByType('navigation'));
    return {ready_ms: window.edgeApp.readyMs, tokenize_ms: median(tok),
            inference_ms: median(inf), per_text_mean_ms: meanMs,
            download_bytes: entries.reduce((s, e) => s + (e.encodedBodySize || 0), 0),
            requests: entries.length};
}"""


GENERATION_TEXTS = {"translation": "Der Hund schläft im Haus.",
                    "language_modeling": "The secret of"}
GENERATION_TOKENS = 32     # language_modeling: new ids per run

PAGE_GENERATION_FIGURES = """async ([task, text, runs, n]) => {
    const r = window.edgeApp.runner;
    const once = () => (task === 'translation' ? r.translate(text)
        : r.generate(text, {strategy: 'greedy', max_new_tokens: n}));
    await once();
    const perToken = [];
    let tokens = 0;
    for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        const result = await once();
        perToken.push((performance.now() - t0) / result.tokenIds.length);
        tokens = result.tokenIds.length;
    }
    perToken.sort((a, b) => a - b);
    const entries = performance.getEntriesByType('resource')
        .concat(performance.getEntriesByType('navigation'));
    return {ready_ms: window.edgeApp.readyMs, ms_per_token: perToken[runs >> 1], tokens,
            download_bytes: entries.reduce((s, e) => s + (e.encodedBodySize || 0), 0),
            requests: entries.length};
}"""


def python_runner(bundle_dir):
    """The Python edge app's runner of a bundle, 1 thread."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app import load_bundle

    return load_bundle(bundle_dir, num_threads=1)


def litert_generation_figures(bundle_dir, task: str, runs: int) -> dict[str, float]:
    runner = python_runner(bundle_dir)
    text = GENERATION_TEXTS[task]

    def once():
        if task == "translation":
            return runner.run(text)
        return runner.run(text, strategy="greedy", max_new_tokens=GENERATION_TOKENS)

    once()
    per_token, tokens = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        result = once()
        tokens = len(result["token_ids"])
        per_token.append((time.perf_counter() - t0) / tokens * 1e3)
    return {"ms_per_token": statistics.median(per_token), "tokens": tokens}


def litert_figures(bundle_dir, text: str = TEXT, runs: int = 200) -> dict[str, float]:
    """Median tokenization and inference latency (ms) of the Python edge app, 1 thread."""
    runner = python_runner(bundle_dir)
    for _ in range(20):
        runner.predict(runner.tokenize(text)[None])
    tok, inf = [], []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        ids = runner.tokenize(text)[None]
        t1 = time.perf_counter()
        runner.predict(ids)
        tok.append(t1 - t0)
        inf.append(time.perf_counter() - t1)
    mean = (time.perf_counter() - start) / runs
    return {"tokenize_ms": statistics.median(tok) * 1e3,
            "inference_ms": statistics.median(inf) * 1e3, "per_text_mean_ms": mean * 1e3}


def page_figures(page, text: str = TEXT, runs: int = 200) -> dict[str, float]:
    """The figures of a Playwright page of the web app that is ready."""
    return page.evaluate(PAGE_FIGURES, [text, runs])


def measure(bundle_dir, loads: int = 3, runs: int = 200, text: str = TEXT) -> dict:
    from playwright.sync_api import sync_playwright

    task = json.loads((Path(bundle_dir) / "manifest.json").read_text()).get(
        "task", "text_classification")
    generation = task in GENERATION_TEXTS

    server, url = serve_in_thread(bundle_dir)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=CHROMIUM_ARGS)
            load_ms = []
            for _ in range(loads):   # a fresh context each time: nothing cached
                context = browser.new_context()
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("document.body.dataset.state !== 'loading'",
                                       timeout=120_000)
                error = page.evaluate("window.edgeApp.error")
                if error:
                    raise SystemExit(f"error: the page says: {error}")
                load_ms.append(page.evaluate("window.edgeApp.readyMs"))
                if len(load_ms) < loads:
                    context.close()
            if generation:
                figures = page.evaluate(PAGE_GENERATION_FIGURES,
                                        [task, GENERATION_TEXTS[task], max(runs // 20, 1),
                                         GENERATION_TOKENS])
            else:
                figures = page_figures(page, text, runs)
            context.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    litert = litert_generation_figures(bundle_dir, task, max(runs // 20, 1)) if generation \
        else litert_figures(bundle_dir, text, runs)
    return {"bundle": str(bundle_dir), "task": task, "page_load_ms": load_ms,
            "browser": figures, "ai_edge_litert": litert}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.web.measure",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a text_classification, "
                        "translation or language_modeling bundle")
    parser.add_argument("--loads", type=int, default=3, help="page loads (default 3)")
    parser.add_argument("--runs", type=int, default=200, help="timed calls (default 200)")
    args = parser.parse_args(argv)
    result = measure(args.bundle, args.loads, args.runs)
    b, p = result["browser"], result["ai_edge_litert"]
    print(json.dumps(result, indent=1))
    print(f"page ready after {statistics.median(result['page_load_ms']):.0f} ms (median of "
          f"{args.loads} cold loads), {b['download_bytes'] / 1e6:.2f} MB downloaded in "
          f"{b['requests']} requests")
    if "ms_per_token" in b:
        print(f"per generated token (greedy, {b['tokens']} tokens), 1 thread: browser "
              f"{b['ms_per_token']:.3f} ms, ai-edge-litert {p['ms_per_token']:.3f} ms")
        return 0
    print(f"per text, batch 1, 1 thread: browser tokenization {b['tokenize_ms']:.3f} ms + "
          f"inference {b['inference_ms']:.3f} ms (mean per text {b['per_text_mean_ms']:.3f}"
          f" ms); ai-edge-litert {p['tokenize_ms']:.3f} ms + {p['inference_ms']:.3f} ms "
          f"(mean {p['per_text_mean_ms']:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
