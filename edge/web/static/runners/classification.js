// What the classification runners share (edge/runners/classification.py): labels, the
// `serving_default` signature's input and output, input quantization and output
// dequantization with the manifest's parameters, ranking.

import {BundleError} from '../lib/bundle.js';
import {Tensor, requireTensors, run, signature, take} from '../lib/litert.js';

export const SIGNATURE_KEY = 'serving_default';

const utf8 = new TextDecoder('utf-8', {fatal: true});

// The lines of a UTF-8 bundle file, trailing empty lines dropped (base.read_lines).
export function readLines(bytes, name) {
  let text;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new BundleError(`${name} is not UTF-8 text`);
  }
  const lines = text.split(/\r\n|\n|\r/);
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines;
}

// {label, probability, topK: [[label, p], ...]} of the k most probable classes; a
// non-finite value ranks last and is reported as null (classification.rank).
export function rank(probabilities, labels, k) {
  const probs = Array.from(probabilities);
  const key = (i) => (Number.isFinite(probs[i]) ? probs[i] : -Infinity);
  const order = probs.map((_, i) => i).sort((a, b) => key(b) - key(a) || a - b).slice(0, k);
  const top = order.map((i) => [labels[i], Number.isFinite(probs[i]) ? probs[i] : null]);
  return {label: top[0][0], probability: top[0][1], topK: top};
}

// round half away from zero, as TFLite's Quantize and classification.quantize
const roundHalfAway = (x) => Math.sign(x) * Math.floor(Math.abs(x) + 0.5);

export function quantize(values, dtype, quantization) {
  const scale = quantization?.scale ?? 0;
  const zeroPoint = quantization?.zero_point ?? 0;
  if (dtype === 'uint8' && scale > 0) {
    return Uint8Array.from(values, (x) =>
      Math.min(255, Math.max(0, roundHalfAway(x / scale + zeroPoint))));
  }
  const Type = {float32: Float32Array, int32: Int32Array, uint8: Uint8Array}[dtype];
  return Type.from(values);
}

export function dequantize(values, dtype, quantization) {
  if (dtype === 'float32') return Float32Array.from(values);
  const scale = Math.fround(quantization?.scale ?? 0);
  const zeroPoint = quantization?.zero_point ?? 0;
  return Float32Array.from(values, (q) => Math.fround(Math.fround(q - zeroPoint) * scale));
}

export class ClassifierRunner {
  constructor(manifest, files, model) {
    this.manifest = manifest;
    this.model = model;
    const labelsFile = manifest.member('labels', 'labels.txt');
    this.labels = readLines(files[labelsFile], labelsFile);
    if (!this.labels.length) throw new BundleError(`${labelsFile} holds no labels`);
    const name = SIGNATURE_KEY in model.signatures ? SIGNATURE_KEY
      : Object.keys(model.signatures)[0];
    this.sig = signature(model, name, manifest.model);
    this.inputKey = this.key(this.sig.inputs, manifest.getStr('input_name'), 'inputs');
    this.outputKey = this.key(this.sig.outputs, manifest.getStr('output_name'), 'outputs');
    requireTensors(this.sig, 'inputs', [this.inputKey], manifest.model);
    requireTensors(this.sig, 'outputs', [this.outputKey], manifest.model);
    this.input = this.sig.inputs[this.inputKey];
    this.output = this.sig.outputs[this.outputKey];
    const spec = manifest.signatures?.[name] ?? {};
    this.inputQuantization = spec.inputs?.[this.inputKey]?.quantization ?? null;
    this.outputQuantization = spec.outputs?.[this.outputKey]?.quantization ?? null;
    if (this.output.dtype !== 'float32' && !(this.outputQuantization?.scale > 0)) {
      throw new BundleError(`Unsupported model: ${manifest.model}'s output is ` +
                            `${this.output.dtype} without a quantization scale in ` +
                            'manifest.json; cannot read probabilities from it.');
    }
    this.latencies = [];
  }

  key(tensors, name, kind) {
    if (name !== null && name in tensors) return name;
    const names = Object.keys(tensors);
    if (names.length === 1) return names[0];
    throw new BundleError(`${this.manifest.model}: signature '${this.sig.name}' has ` +
                          `${kind} ${names.join(', ')}, none named '${name}' as the ` +
                          'manifest says');
  }

  // The model's input shape, [1, ...] (a -1 batch is fixed to 1: LiteRT.js cannot
  // resize it); checked against `expected` (the manifest's sizes).
  checkInputShape(expected, meaning, manifestKeys) {
    const shape = this.input.shape;
    if (shape.length !== expected.length) {
      throw new BundleError(`Unsupported model: ${this.manifest.model}'s input must be ` +
                            `${meaning}, it is [${shape}]`);
    }
    shape.slice(1).forEach((dim, i) => {
      if (dim > 0 && dim !== expected[i + 1]) {
        throw new BundleError(`${this.manifest.model} takes input [${shape}] but ` +
                              `manifest.json says ${manifestKeys[i]}=${expected[i + 1]}`);
      }
    });
    this.inputShape = expected;
  }

  async checkClasses(example) {
    const probs = await this.predict(example);
    if (probs.length !== this.labels.length) {
      throw new BundleError(`${this.manifest.model} outputs ${probs.length} classes but ` +
                            `the labels file has ${this.labels.length} lines`);
    }
  }

  // Float32Array (num_classes,) probabilities of one input given as real values
  // (token ids, pixel values), quantized first when the model's input is.
  async predict(values) {
    const data = quantize(values, this.input.dtype, this.inputQuantization);
    const out = await run(this.sig, {[this.inputKey]: new Tensor(data, this.inputShape)});
    for (const [name, tensor] of Object.entries(out)) {
      if (name !== this.outputKey) tensor.delete();
    }
    return dequantize(take(out[this.outputKey]), this.output.dtype, this.outputQuantization);
  }

  ranked(probabilities, topK = 5) {
    return rank(probabilities, this.labels, Math.max(1, Math.min(topK, this.labels.length)));
  }
}
