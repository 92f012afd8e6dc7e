// The page: read the bundle's manifest, pick the runner of its task, verify every file's
// sha256, load LiteRT.js and the model, then show the task's UI. Any error is shown in
// words in #error. State for tests and measurements: window.edgeApp and
// document.body.dataset.state ('loading', 'ready' or 'error').

import {BundleError, readManifest, verifyFiles} from './lib/bundle.js';
import {compileModel, loadRuntime} from './lib/litert.js';
import {RUNNERS, supportedTasks} from './runners/index.js';

const BUNDLE = '/bundle/';
const app = {ready: false, error: null};
window.edgeApp = app;

function showError(error) {
  const box = document.getElementById('error');
  const known = error instanceof BundleError;
  box.replaceChildren();
  const title = document.createElement('strong');
  title.textContent = known ? 'This bundle cannot run here.' : 'Something went wrong.';
  box.append(title, error.message ?? String(error));
  box.hidden = false;
  document.getElementById('status').textContent = '';
  app.error = error.message ?? String(error);
}

async function where() {
  try {
    return (await (await fetch('/server.json', {cache: 'no-store'})).json()).bundle;
  } catch {
    return 'the bundle directory';
  }
}

async function start() {
  const status = document.getElementById('status');
  try {
    const bundleDir = await where();
    const runtime = loadRuntime();          // the WASM download overlaps the bundle's
    runtime.catch(() => {});
    const manifest = await readManifest(BUNDLE, bundleDir);
    document.getElementById('bundle-info').textContent =
      `${bundleDir} · task ${manifest.task} · ${manifest.variant}`;
    const Runner = RUNNERS[manifest.task];
    if (!Runner) {
      throw new BundleError(`Unsupported task '${manifest.task}' in manifest.json: this ` +
                            `page runs ${supportedTasks().join(', ')}.`);
    }
    status.textContent = 'Checking the sha256 of every bundle file…';
    const files = await verifyFiles(BUNDLE, manifest);
    status.textContent = 'Loading LiteRT.js and the model…';
    await runtime;
    const model = await compileModel(files[manifest.model], manifest.model);
    const runner = await Runner.create(manifest, files, model);
    runner.render(document.getElementById('task'));
    Object.assign(app, {manifest, runner, ready: true, readyMs: performance.now()});
    const size = Object.values(files).reduce((n, b) => n + b.length, 0);
    status.textContent = `Ready in ${(app.readyMs / 1000).toFixed(2)} s · bundle ` +
      `${(size / 1e6).toFixed(2)} MB, verified · runs on this device (LiteRT.js, WASM)`;
    document.body.dataset.state = 'ready';
  } catch (error) {
    showError(error);
    document.body.dataset.state = 'error';
  }
}

start();
