// A minimal reader of the .tflite flatbuffer (schema.fbs: Model.subgraphs -> SubGraph.tensors
// -> Tensor.shape / shape_signature), for one fix: LiteRT.js cannot resize a dynamic
// (-1) dimension and refuses a batch-1 input tensor for a [-1, T] signature, while the
// Python app runs such a model at batch 1. `fixDynamicDimensions` returns a copy of the
// model whose shape_signature holds the static shape (batch 1) where it had -1: the
// model ai-edge-litert runs after allocating tensors at batch 1. Same size, same graph.

const MODEL_SUBGRAPHS = 2;
const SUBGRAPH_TENSORS = 0;
const TENSOR_SHAPE = 0;
const TENSOR_SHAPE_SIGNATURE = 7;

class Reader {
  constructor(bytes) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  // Absolute position of field `index` of the table at `table`, or null when absent.
  field(table, index) {
    const vtable = table - this.view.getInt32(table, true);
    const vtableSize = this.view.getUint16(vtable, true);
    if (4 + 2 * index >= vtableSize) return null;
    const offset = this.view.getUint16(vtable + 4 + 2 * index, true);
    return offset ? table + offset : null;
  }

  // [position of element 0, length] of the vector that field `index` points to.
  vector(table, index) {
    const at = this.field(table, index);
    if (at === null) return null;
    const vector = at + this.view.getUint32(at, true);
    return [vector + 4, this.view.getUint32(vector, true)];
  }

  // The tables of a vector of tables.
  tables(table, index) {
    const v = this.vector(table, index);
    if (!v) return [];
    const [start, length] = v;
    return Array.from({length}, (_, i) => start + 4 * i + this.view.getUint32(start + 4 * i,
                                                                                true));
  }
}

// {bytes, fixed}: a copy of the model with every -1 of a tensor's shape_signature set to
// the static shape's value (fixed = how many), or the bytes themselves when there is none.
export function fixDynamicDimensions(bytes) {
  const reader = new Reader(bytes);
  const patches = [];
  const root = reader.view.getUint32(0, true);
  for (const subgraph of reader.tables(root, MODEL_SUBGRAPHS)) {
    for (const tensor of reader.tables(subgraph, SUBGRAPH_TENSORS)) {
      const signature = reader.vector(tensor, TENSOR_SHAPE_SIGNATURE);
      const shape = reader.vector(tensor, TENSOR_SHAPE);
      if (!signature || !shape || signature[1] !== shape[1]) continue;
      for (let i = 0; i < signature[1]; i++) {
        const at = signature[0] + 4 * i;
        if (reader.view.getInt32(at, true) === -1) {
          patches.push([at, reader.view.getInt32(shape[0] + 4 * i, true)]);
        }
      }
    }
  }
  if (!patches.length) return {bytes, fixed: 0};
  const copy = bytes.slice();
  const view = new DataView(copy.buffer, copy.byteOffset, copy.byteLength);
  for (const [at, value] of patches) view.setInt32(at, value, true);
  return {bytes: copy, fixed: patches.length};
}
