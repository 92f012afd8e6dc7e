// LiteRT.js (@litertjs/core, WebAssembly/XNNPACK on the CPU): the runtime, loaded once
// from this server's node_modules (no CDN), and the model helpers the runners share.
// LiteRT.js tensors are float32, int32 or uint8 and live in WASM memory until
// .delete(): every helper here deletes what it creates.

import {loadAndCompile, loadLiteRt, Tensor} from '@litertjs/core';

import {BundleError} from './bundle.js';
import {fixDynamicDimensions} from './tflite.js';

export const WASM_DIR = '/node_modules/@litertjs/core/wasm/';
export const JS_DTYPES = ['float32', 'int32', 'uint8'];
export {Tensor};

let runtime = null;

export function loadRuntime() {
  runtime ??= loadLiteRt(WASM_DIR).catch((e) => {
    runtime = null;
    throw new BundleError(`the LiteRT.js runtime could not be loaded from ${WASM_DIR} ` +
                          `(${e.message ?? e}); run \`make setup\` (npm ci in edge/web)`);
  });
  return runtime;
}

// The compiled model of .tflite bytes, CPU (WASM) execution; dynamic (-1) dimensions are
// fixed to the model's static shape first (tflite.js).
export async function compileModel(bytes, name) {
  await loadRuntime();
  let model = bytes;
  try {
    model = fixDynamicDimensions(bytes).bytes;
  } catch (e) {
    throw new BundleError(`Unsupported model: ${name} is not a TFLite flatbuffer ` +
                          `(${e.message ?? e}).`);
  }
  try {
    return await loadAndCompile(model, {accelerator: 'wasm'});
  } catch (e) {
    throw new BundleError(`Unsupported model: ${name} cannot be run by LiteRT.js ` +
                          `(${e.message ?? e}).`);
  }
}

// name -> {name, dtype, shape: number[]} of a signature's inputs or outputs.
export function details(list) {
  return Object.fromEntries(list.map((d) => [d.name, {name: d.name, dtype: d.dtype,
                                                      shape: Array.from(d.shape)}]));
}

// The signature runner `name` of a compiled model with its input and output details;
// BundleError naming what is missing.
export function signature(model, name, modelName) {
  const runner = model.signatures[name];
  if (!runner) {
    throw new BundleError(`Unsupported model: ${modelName} has no signature '${name}' (it ` +
                          `has ${Object.keys(model.signatures).join(', ') || 'none'}).`);
  }
  return {name, runner, inputs: details(runner.getInputDetails()),
          outputs: details(runner.getOutputDetails())};
}

// Checks that signature `sig` has the named tensors, of JS-supported dtypes.
export function requireTensors(sig, kind, names, modelName) {
  const have = sig[kind];
  const missing = names.filter((n) => !(n in have));
  if (missing.length) {
    throw new BundleError(`Unsupported model: ${modelName}: signature '${sig.name}' lacks ` +
                          `${kind} ${missing.join(', ')} (it has ` +
                          `${Object.keys(have).join(', ')}).`);
  }
  for (const n of names) {
    if (!JS_DTYPES.includes(have[n].dtype)) {
      throw new BundleError(`Unsupported model: ${modelName}: ${kind.slice(0, -1)} '${n}' ` +
                            `of signature '${sig.name}' is ${have[n].dtype}; LiteRT.js ` +
                            `tensors are ${JS_DTYPES.join(', ')} only.`);
    }
  }
}

export const int32 = (values, shape) => new Tensor(Int32Array.from(values), shape);
export const scalarInt32 = (value) => new Tensor(Int32Array.of(value), []);

// Runs signature `sig` on {name: Tensor}; deletes the input tensors not listed in
// `keepInputs`, returns the output Tensors by name (the caller deletes them).
export async function run(sig, inputs, keepInputs = []) {
  try {
    return await sig.runner.run(inputs);
  } finally {
    for (const [name, tensor] of Object.entries(inputs)) {
      if (!keepInputs.includes(name) && !keepInputs.includes(tensor)) tensor.delete();
    }
  }
}

// A copy of a tensor's values, then the tensor deleted.
export function take(tensor) {
  const values = tensor.toTypedArray().slice();
  tensor.delete();
  return values;
}

export function deleteAll(record, keep = []) {
  for (const tensor of Object.values(record)) {
    if (!keep.includes(tensor) && !tensor.deleted) tensor.delete();
  }
}
