// What the autoregressive runners share: the tokenizer keys, argmax, yielding to the
// page between steps so the tokens show as they are produced.

import {BundleError} from '../lib/bundle.js';

// np.argmax: the first index of the largest value.
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export function specialIds(manifest) {
  const special = manifest.raw.special_ids;
  if (!Array.isArray(special) || !special.every(Number.isInteger)) {
    throw new BundleError('manifest.json: special_ids must be a list of integers, got ' +
                          JSON.stringify(special));
  }
  return special;
}

// Lets the browser paint the text produced so far.
export const nextFrame = () => (globalThis.scheduler?.yield
  ? globalThis.scheduler.yield() : new Promise((resolve) => setTimeout(resolve, 0)));

export const sameShape = (a, b) => a.length === b.length && a.every((d, i) => d === b[i]);
