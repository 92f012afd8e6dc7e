// SentencePiece in the page (@sctg/sentencepiece-js: the C++ library compiled to
// WebAssembly) with the pipeline's length rules, as edge/runners/base.py `tokenize`:
// sp.encode of the text's first max_text_bytes UTF-8 bytes (a character cut in two
// becomes U+FFFD), no bos/eos, truncated to max_sequence_length, right-padded with pad_id.

import {SentencePieceProcessor} from '@sctg/sentencepiece-js';

import {BundleError} from './bundle.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');   // not fatal: invalid bytes become U+FFFD

// The text as the pipeline sees it: valid Unicode (lone surrogates -> U+FFFD, as
// base.valid_text) and at most maxTextBytes UTF-8 bytes (null: all of it).
export function clipText(text, maxTextBytes) {
  const data = encoder.encode(text);        // lone surrogates are encoded as U+FFFD
  if (maxTextBytes !== null && data.length > maxTextBytes) {
    return decoder.decode(data.subarray(0, maxTextBytes));
  }
  return text.isWellFormed() ? text : decoder.decode(data);
}

export class Tokenizer {
  constructor(processor, maxSequenceLength, padId = 0, maxTextBytes = null) {
    this.processor = processor;
    this.maxSequenceLength = maxSequenceLength;
    this.padId = padId;
    this.maxTextBytes = maxTextBytes;
  }

  // A tokenizer over the bytes of a .model file (`name` in messages).
  static async fromBytes(bytes, maxSequenceLength, padId = 0, maxTextBytes = null,
                         name = 'spm.model') {
    const processor = new SentencePieceProcessor();
    let status = null;
    try {
      // The package's load() reads a path with node's fs; _loadModel takes the bytes.
      // A failed load throws nothing: the processor's status says it.
      await processor._loadModel(bytes);
      const check = processor.processor.status();
      status = check.ToString();
      check.delete();
    } catch (e) {
      status = String(e.message ?? e);
    }
    if (status !== 'OK') {
      throw new BundleError(`Unsupported tokenizer: ${name} is not a SentencePiece model ` +
                            `(${status}).`);
    }
    return new Tokenizer(processor, maxSequenceLength, padId, maxTextBytes);
  }

  // As the Python SentencePieceTokenizer.from_manifest: file `fileKey`, `lengthKey`
  // tokens at most, pad_id, the first `bytesKey` bytes of a text (absent or null: all).
  static async fromManifest(manifest, files, {fileKey = 'tokenizer',
    defaultFile = 'spm.model', lengthKey = 'max_sequence_length',
    bytesKey = 'max_text_bytes'} = {}) {
    const name = manifest.member(fileKey, defaultFile);
    const length = manifest.getInt(lengthKey, undefined, 1);
    const padId = manifest.getInt('pad_id', 0);
    const maxBytes = manifest.raw[bytesKey] == null ? null
      : manifest.getInt(bytesKey, undefined, 1);
    return Tokenizer.fromBytes(files[name], length, padId, maxBytes, name);
  }

  // The ids of a text, unpadded and untruncated (after clipText).
  encode(text) {
    return this.processor.encodeIds(clipText(text, this.maxTextBytes));
  }

  // Int32Array (maxSequenceLength,): the model's input row.
  tokenize(text) {
    const out = new Int32Array(this.maxSequenceLength).fill(this.padId);
    out.set(this.encode(text).slice(0, this.maxSequenceLength));
    return out;
  }

  // The text of ids (edge/runners/base.py `detokenize`): the ids before the first eos,
  // special ids dropped.
  detokenize(ids, eosId, specialIds) {
    let kept = Array.from(ids, Number);
    const end = kept.indexOf(eosId);
    if (end >= 0) kept = kept.slice(0, end);
    const special = new Set(specialIds);
    kept = kept.filter((i) => !special.has(i));
    return kept.length ? this.processor.decodeIds(kept) : '';
  }
}
