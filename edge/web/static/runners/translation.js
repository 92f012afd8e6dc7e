// translation bundles (edge/runners/translation.py): German text -> English text with
// the `encode` and `decode` signatures. greedyDecode is the loop of greedy_decode:
// encode once, then decode once per token from bos, passing back the self_cache tensor
// it returned (zeros at first), until eos or max_target_length ids; the argmax of the
// logits each step. The cross_cache and the caches stay LiteRT.js tensors between steps.

import {BundleError} from '../lib/bundle.js';
import {Tensor, deleteAll, int32, requireTensors, run, scalarInt32, signature, take}
  from '../lib/litert.js';
import {Tokenizer} from '../lib/tokenizer.js';
import {el, guarded, ms} from '../lib/ui.js';
import {argmax, nextFrame, sameShape, specialIds} from './generation.js';

export const ENCODE = 'encode';
export const DECODE = 'decode';

// The generated ids (eos included when emitted) of padded source ids; onToken(ids so
// far) after each step.
export async function greedyDecode(encode, decode, sourceIds, selfCacheShape, bosId, eosId,
                                   maxLength, padId = 0, onToken = null) {
  const length = sourceIds.length;
  const mask = Int32Array.from(sourceIds, (id) => (id !== padId ? 1 : 0));
  const encoded = await run(encode, {source_ids: int32(sourceIds, [1, length]),
                                     source_padding_mask: int32(mask, [1, length])});
  const crossCache = encoded.cross_cache;
  deleteAll(encoded, [crossCache]);
  const padding = int32(mask, [1, length]);
  let selfCache = new Tensor(new Float32Array(selfCacheShape.reduce((a, b) => a * b, 1)),
                             selfCacheShape);
  const generated = [];
  let token = bosId;
  try {
    for (let index = 0; index < maxLength; index++) {
      const out = await run(decode, {token_ids: int32([token], [1, 1]),
                                     index: scalarInt32(index), self_cache: selfCache,
                                     cross_cache: crossCache,
                                     source_padding_mask: padding},
                            ['self_cache', 'cross_cache', 'source_padding_mask']);
      selfCache.delete();
      selfCache = out.self_cache;
      deleteAll(out, [selfCache, out.logits]);
      token = argmax(take(out.logits));
      generated.push(token);
      if (onToken) await onToken(generated);
      if (token === eosId) break;
    }
  } finally {
    for (const t of [selfCache, crossCache, padding]) if (!t.deleted) t.delete();
  }
  return generated;
}

export class TranslationRunner {
  static async create(manifest, files, model) {
    const r = new TranslationRunner();
    r.manifest = manifest;
    r.tokenizer = await Tokenizer.fromManifest(manifest, files,
                                               {lengthKey: 'max_source_length'});
    r.maxSourceLength = r.tokenizer.maxSequenceLength;
    r.maxTargetLength = manifest.getInt('max_target_length', undefined, 1);
    r.bosId = manifest.getInt('bos_id');
    r.eosId = manifest.getInt('eos_id');
    r.specialIds = specialIds(manifest);
    r.encode = signature(model, ENCODE, manifest.model);
    r.decode = signature(model, DECODE, manifest.model);
    requireTensors(r.encode, 'inputs', ['source_ids', 'source_padding_mask'], manifest.model);
    requireTensors(r.encode, 'outputs', ['cross_cache'], manifest.model);
    requireTensors(r.decode, 'inputs', ['token_ids', 'index', 'self_cache', 'cross_cache',
                                        'source_padding_mask'], manifest.model);
    requireTensors(r.decode, 'outputs', ['logits', 'self_cache'], manifest.model);
    const sourceShape = r.encode.inputs.source_ids.shape;
    if (!sameShape(sourceShape, [1, r.maxSourceLength])) {
      throw new BundleError(`${manifest.model}: encode takes source_ids of shape ` +
                            `[${sourceShape}] but manifest.json says max_source_length=` +
                            `${r.maxSourceLength}`);
    }
    r.selfCacheShape = r.decode.inputs.self_cache.shape;
    if (r.selfCacheShape.length !== 6 || r.selfCacheShape[3] !== r.maxTargetLength) {
      throw new BundleError(`${manifest.model}: decode's self_cache has shape ` +
                            `[${r.selfCacheShape}], expected (1, layers, 2, ` +
                            `max_target_length=${r.maxTargetLength}, heads, head_dim)`);
    }
    r.latencies = [];
    return r;
  }

  // {text, translation, tokenIds, tokenizationMs, latencyMs}; onText(partial text)
  // after each generated id.
  async translate(text, onText = null) {
    const t0 = performance.now();
    const ids = this.tokenizer.tokenize(text);
    const t1 = performance.now();
    const onToken = onText && (async (generated) => {
      onText(this.tokenizer.detokenize(generated, this.eosId, this.specialIds));
      await nextFrame();
    });
    const generated = await greedyDecode(this.encode, this.decode, ids, this.selfCacheShape,
                                         this.bosId, this.eosId, this.maxTargetLength,
                                         this.tokenizer.padId, onToken);
    const t2 = performance.now();
    this.latencies.push(t2 - t0);
    return {text, translation: this.tokenizer.detokenize(generated, this.eosId,
                                                         this.specialIds),
            tokenIds: generated, tokenizationMs: t1 - t0, latencyMs: t2 - t0};
  }

  render(root) {
    const text = el('textarea', {id: 'text', rows: '3', placeholder: 'Deutscher Text'});
    text.value = 'Der Hund schläft im Haus.';
    const output = el('div', {class: 'output', id: 'output'});
    const latency = el('div', {class: 'latency', id: 'latency'});
    const errorLine = el('div', {class: 'task-error', id: 'task-error', role: 'alert'});
    const go = guarded(async () => {
      latency.textContent = '';
      const r = await this.translate(text.value, (partial) => {
        output.textContent = partial;
      });
      output.textContent = r.translation;
      latency.textContent = `${r.tokenIds.length} tokens · total ${ms(r.latencyMs)} ` +
        `(${ms(r.latencyMs / Math.max(r.tokenIds.length, 1))} per token, greedy)`;
      root.dataset.runs = String(Number(root.dataset.runs ?? 0) + 1);
    }, errorLine);
    root.append(el('h2', {text: 'Translation (German → English)'}), text,
                el('button', {id: 'run', onclick: go}, 'Translate'), errorLine,
                el('div', {class: 'muted', text: 'English:'}), output, latency);
  }
}
