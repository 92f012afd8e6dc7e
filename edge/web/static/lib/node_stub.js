// Stands in for node's "fs" and "buffer" modules, which @sctg/sentencepiece-js imports by
// name but only calls under node (this page loads models from bytes, see tokenizer.js).
export const Buffer = undefined;
export default {};
