// text_classification bundles (edge/runners/text_classification.py): a text -> its
// label, the top probabilities, and the latency of tokenization and inference.

import {BundleError} from '../lib/bundle.js';
import {Tokenizer} from '../lib/tokenizer.js';
import {barChart, el, guarded, ms} from '../lib/ui.js';
import {ClassifierRunner} from './classification.js';

export const EXAMPLE = 'dog, domestic dog: a member of the genus Canis that has been ' +
  'domesticated by man since prehistoric times';

export class TextClassificationRunner extends ClassifierRunner {
  static async create(manifest, files, model) {
    const runner = new TextClassificationRunner(manifest, files, model);
    runner.tokenizer = await Tokenizer.fromManifest(manifest, files);
    const length = runner.tokenizer.maxSequenceLength;
    if (runner.input.dtype !== 'int32') {
      throw new BundleError(`Unsupported model: ${manifest.model} takes ` +
                            `${runner.input.dtype} input; this page feeds int32 token ids`);
    }
    runner.checkInputShape([1, length], '(batch, max_sequence_length) token ids',
                           ['max_sequence_length']);
    await runner.checkClasses(new Int32Array(length));
    return runner;
  }

  // {text, label, probability, topK, probabilities, tokenizationMs, inferenceMs,
  //  latencyMs} of one text, batch 1.
  async classify(text, topK = 5) {
    const t0 = performance.now();
    const ids = this.tokenizer.tokenize(text);
    const t1 = performance.now();
    const probabilities = await this.predict(ids);
    const t2 = performance.now();
    const result = {text, ...this.ranked(probabilities, topK),
                    probabilities: Array.from(probabilities),
                    tokenizationMs: t1 - t0, inferenceMs: t2 - t1, latencyMs: t2 - t0};
    this.latencies.push(result.latencyMs);
    return result;
  }

  // For tests and measurements: ids of many texts in one call (`padded`: the model's
  // rows; else the whole encoding of the clipped text).
  encodeBatch(texts, padded = false) {
    return texts.map((t) => Array.from(padded ? this.tokenizer.tokenize(t)
                                              : this.tokenizer.encode(t)));
  }

  async probabilitiesBatch(texts) {
    const out = [];
    for (const text of texts) {
      out.push(Array.from(await this.predict(this.tokenizer.tokenize(text))));
    }
    return out;
  }

  render(root) {
    const text = el('textarea', {id: 'text', rows: '3', placeholder: 'Type a text'});
    text.value = EXAMPLE;
    const result = el('div', {class: 'result', id: 'result'});
    const errorLine = el('div', {class: 'task-error', id: 'task-error', role: 'alert'});
    const go = guarded(async () => {
      const r = await this.classify(text.value, 5);
      result.replaceChildren(
        el('div', {}, 'Label: ', el('span', {class: 'label', id: 'label', text: r.label}),
           el('span', {class: 'muted', text: `  p = ${r.probability?.toFixed(4)}`})),
        barChart(r.topK.map(([label, p]) => [label, p ?? 0])),
        el('div', {class: 'latency', id: 'latency',
                   text: `tokenization ${ms(r.tokenizationMs)} · inference ` +
                         `${ms(r.inferenceMs)} · total ${ms(r.latencyMs)} ` +
                         `(${this.tokenizer.maxSequenceLength} token ids)`}));
      root.dataset.runs = String(Number(root.dataset.runs ?? 0) + 1);
    }, errorLine);
    text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) go();
    });
    root.append(el('h2', {text: 'Text classification'}), text,
                el('button', {id: 'run', onclick: go}, 'Classify'),
                el('span', {class: 'muted', text: ' (Ctrl+Enter)'}), errorLine, result);
  }
}
