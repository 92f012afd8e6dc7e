// language_modeling bundles (edge/runners/language_modeling.py): a prompt -> its
// continuation, shown as it is produced. generateTokens is the loop of generate_tokens:
// `prefill` once over [bos] + the prompt's ids, then `decode` once per new id, fed the
// previous id, its position and the cache tensor it returned the step before; it stops
// after eos, after max_new_tokens ids, or when the sequence fills the cache.
// sampleNext follows sample_next (greedy, random, top_k, top_p at a temperature); the
// draws come from a seeded mulberry32 generator: the same seed gives the same text in the
// page, but not the text numpy's generator gives the Python app (greedy is the same).

import {BundleError} from '../lib/bundle.js';
import {deleteAll, int32, requireTensors, run, scalarInt32, signature, take}
  from '../lib/litert.js';
import {Tokenizer} from '../lib/tokenizer.js';
import {el, guarded, ms} from '../lib/ui.js';
import {argmax, nextFrame, sameShape, specialIds} from './generation.js';

export const PREFILL = 'prefill';
export const DECODE = 'decode';
export const STRATEGIES = ['greedy', 'random', 'top_k', 'top_p'];

export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Indices sorted by decreasing value, ties in index order (argsort(-x, stable)).
const order = (values, idx) => idx.slice().sort((a, b) => values[b] - values[a] || a - b);

export function sampleNext(logits, random, {strategy = 'greedy', temperature = 1.0,
  top_k: topK = 40, top_p: topP = 0.9} = {}) {
  if (strategy === 'greedy' || temperature <= 0) return argmax(logits);
  if (!STRATEGIES.includes(strategy)) throw new Error(`unknown strategy ${strategy}`);
  const scaled = Array.from(logits, (x) => x / temperature);
  let keep = scaled.map((_, i) => i);
  if (strategy === 'top_k') keep = order(scaled, keep).slice(0, Math.max(topK, 1));
  const top = Math.max(...keep.map((i) => scaled[i]));
  let probs = keep.map((i) => Math.exp(scaled[i] - top));
  let total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  if (strategy === 'top_p' && topP < 1) {
    const byP = order(probs, probs.map((_, i) => i));
    let before = 0;
    const kept = [];
    for (const i of byP) {
      if (before < topP) kept.push(i);
      before += probs[i];
    }
    keep = kept.map((i) => keep[i]);
    total = kept.reduce((a, i) => a + probs[i], 0);
    probs = kept.map((i) => probs[i] / total);
  }
  const u = random();
  let cdf = 0;
  for (let i = 0; i < probs.length; i++) {
    cdf += probs[i];
    if (u < cdf) return keep[i];
  }
  return keep[keep.length - 1];
}

// The ids after promptIds, as they are produced: onToken(id) after each.
export async function generateTokens(prefill, decode, promptIds, prefillLength,
                                     maxNewTokens, eosId, choose, maxSequenceLength,
                                     padId = 0, onToken = null) {
  if (promptIds.length < 1 || promptIds.length > prefillLength) {
    throw new Error(`a prompt of ${promptIds.length} ids: prefill takes 1 to ${prefillLength}`);
  }
  const padded = new Int32Array(prefillLength).fill(padId);
  padded.set(promptIds);
  let out = await run(prefill, {token_ids: int32(padded, [1, prefillLength]),
                                length: scalarInt32(promptIds.length)});
  let cache = out.cache;
  deleteAll(out, [cache, out.logits]);
  let logits = take(out.logits);
  let position = promptIds.length;
  const generated = [];
  try {
    const steps = Math.min(maxNewTokens, maxSequenceLength - position);
    for (let step = 0; step < steps; step++) {
      const token = choose(logits);
      generated.push(token);
      if (onToken) await onToken(token, generated);
      if (token === eosId || position >= maxSequenceLength - 1) break;
      out = await run(decode, {token_ids: int32([token], [1, 1]),
                               index: scalarInt32(position), cache}, ['cache']);
      cache.delete();
      cache = out.cache;
      deleteAll(out, [cache, out.logits]);
      logits = take(out.logits);
      position += 1;
    }
  } finally {
    if (!cache.deleted) cache.delete();
  }
  return generated;
}

export class LanguageModelRunner {
  static async create(manifest, files, model) {
    const r = new LanguageModelRunner();
    r.manifest = manifest;
    r.maxSequenceLength = manifest.getInt('max_sequence_length', undefined, 2);
    r.prefillLength = manifest.getInt('prefill_length', undefined, 1);
    r.tokenizer = await Tokenizer.fromManifest(manifest, files,
                                               {lengthKey: 'prefill_length'});
    r.tokenizer.maxSequenceLength = r.prefillLength - 1;   // [bos] + the prompt
    r.bosId = manifest.getInt('bos_id');
    r.eosId = manifest.getInt('eos_id');
    r.specialIds = specialIds(manifest);
    const defaults = manifest.raw.generate;
    if (!defaults || typeof defaults !== 'object') {
      throw new BundleError('manifest.json: generate must be an object of sampling defaults');
    }
    r.settings = {strategy: 'greedy', temperature: 1.0, top_k: 40, top_p: 0.9, seed: 0,
                  max_new_tokens: 32, ...defaults};
    r.prefill = signature(model, PREFILL, manifest.model);
    r.decode = signature(model, DECODE, manifest.model);
    requireTensors(r.prefill, 'inputs', ['token_ids', 'length'], manifest.model);
    requireTensors(r.prefill, 'outputs', ['logits', 'cache'], manifest.model);
    requireTensors(r.decode, 'inputs', ['token_ids', 'index', 'cache'], manifest.model);
    requireTensors(r.decode, 'outputs', ['logits', 'cache'], manifest.model);
    const shape = r.prefill.inputs.token_ids.shape;
    if (!sameShape(shape, [1, r.prefillLength])) {
      throw new BundleError(`${manifest.model}: prefill takes token_ids of shape [${shape}] ` +
                            `but manifest.json says prefill_length=${r.prefillLength}`);
    }
    const cache = r.decode.inputs.cache.shape;
    if (cache.length !== 6 || cache[3] !== r.maxSequenceLength) {
      throw new BundleError(`${manifest.model}: decode's cache is [${cache}], expected ` +
                            `(1, layers, 2, max_sequence_length=${r.maxSequenceLength}, ` +
                            'heads, head_dim)');
    }
    r.latencies = [];
    return r;
  }

  // [bos] + the prompt's ids (at most prefill_length).
  tokenize(prompt) {
    const ids = Array.from(this.tokenizer.tokenize(prompt)).filter(
      (i) => i !== this.tokenizer.padId);
    return [this.bosId, ...ids];
  }

  textOf(promptIds, newIds) {
    return this.tokenizer.detokenize([...promptIds, ...newIds], this.eosId, this.specialIds);
  }

  // {text, generatedText, completion, tokenIds, timeToFirstTokenMs, tokensPerSecond,
  //  latencyMs}; onText(the prompt and the text so far) after each id.
  async generate(prompt, settings = {}, onText = null) {
    const s = {...this.settings, ...settings};
    const promptIds = this.tokenize(prompt);
    if (onText) onText(this.textOf(promptIds, []));
    const random = mulberry32(s.seed);
    const start = performance.now();
    let first = null;
    const onToken = async (token, generated) => {
      first ??= performance.now();
      if (onText) {
        onText(this.textOf(promptIds, generated));
        await nextFrame();
      }
    };
    const ids = await generateTokens(this.prefill, this.decode, promptIds, this.prefillLength,
                                     s.max_new_tokens, this.eosId,
                                     (logits) => sampleNext(logits, random, s),
                                     this.maxSequenceLength, this.tokenizer.padId, onToken);
    const end = performance.now();
    this.latencies.push(end - start);
    first ??= start;
    const decoded = Math.max(ids.length - 1, 0);
    return {text: prompt, generatedText: this.textOf(promptIds, ids),
            completion: this.tokenizer.detokenize(ids, this.eosId, this.specialIds),
            tokenIds: ids, timeToFirstTokenMs: first - start,
            tokensPerSecond: decoded && end > first ? decoded / ((end - first) / 1000) : 0,
            latencyMs: end - start};
  }

  render(root) {
    const text = el('textarea', {id: 'text', rows: '2', placeholder: 'A prompt'});
    text.value = 'The secret of';
    const s = this.settings;
    const strategy = el('select', {id: 'strategy'},
                        ...STRATEGIES.map((n) => el('option', {value: n, text: n})));
    strategy.value = 'greedy';
    const field = (id, value, step) => el('input', {id, type: 'number', value: String(value),
                                                    step: String(step)});
    const maxNew = field('max-new-tokens', s.max_new_tokens, 1);
    const temperature = field('temperature', s.temperature, 0.1);
    const seed = field('seed', s.seed, 1);
    const output = el('div', {class: 'output', id: 'output'});
    const latency = el('div', {class: 'latency', id: 'latency'});
    const errorLine = el('div', {class: 'task-error', id: 'task-error', role: 'alert'});
    const go = guarded(async () => {
      latency.textContent = '';
      const r = await this.generate(text.value, {
        strategy: strategy.value, max_new_tokens: Number(maxNew.value),
        temperature: Number(temperature.value), seed: Number(seed.value)},
      (partial) => {
        output.textContent = partial;
      });
      output.textContent = r.generatedText;
      latency.textContent = `${r.tokenIds.length} tokens · first after ` +
        `${ms(r.timeToFirstTokenMs)} · ${r.tokensPerSecond.toFixed(1)} tokens/s · total ` +
        `${ms(r.latencyMs)}`;
      root.dataset.runs = String(Number(root.dataset.runs ?? 0) + 1);
    }, errorLine);
    root.append(el('h2', {text: 'Text generation'}), text,
                el('div', {class: 'controls'},
                   el('label', {}, 'sampling ', strategy),
                   el('label', {}, 'max new tokens ', maxNew),
                   el('label', {}, 'temperature ', temperature),
                   el('label', {}, 'seed ', seed)),
                el('button', {id: 'run', onclick: go}, 'Generate'), errorLine, output, latency);
  }
}
