"""Post-training quantization recipes for the TFLite variants.

The float graph comes from the SavedModel written by `export.tflite`; each
recipe here turns it into one variant:

  float16        float16 weights, float32 compute (converter's float16 path)
  dynamic_range  int8 weights, float activations (converter's default path)
  int8           full integer: int8 weights and activations, int32 token ids
                 in, float32 (or int8) probabilities out; calibrated on token
                 ids of the TRAIN split
  int16x8        int16 activations, int8 weights (the converter's
                 EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8)

Why int8 needs more than the converter's defaults (docs/QUANTIZATION.md has the
measurements): the attention layer masks padded keys with a fill value of
-1e9 before the softmax. Calibration then records a range of about [-1e9, 10]
for the attention scores, whose int8 scale (~4e6) rounds every real score to
the same value: attention becomes uniform and test accuracy drops by about 15
points. The recipe therefore

  1. rewrites that fill constant in the float TFLite graph to
     `mask_fill_value` (default -20: exp(-20) ~ 2e-9, still no attention to
     padding), so the scores keep a usable int8 scale;
  2. calibrates on real token ids (`calibration_examples` of the train split);
  3. quantizes with the MLIR quantizer, optionally keeping ops in float
     (`float_ops`, the quantization debugger's deny-list) and with per-channel
     or per-tensor weights.

int16x8 goes through TFLite's older quantizer, which fails on int32 arithmetic
(the negative-index wrap `where(ids < 0, ids + vocab, ids)` of keras'
Embedding: "Max and min for dynamic tensors should be recorded") and emits an
int16 SQUARED_DIFFERENCE that has no kernel. The recipe removes the wrap
(token ids from the tokenizer are never negative) and rewrites
SQUARED_DIFFERENCE(a, b) as MUL(SUB(a, b), SUB(a, b)) before calibrating.

The graph edits use `tensorflow.lite.tools.flatbuffer_utils`; calibration and
quantization use the converter's own calibrator and MLIR quantizer (the same
calls `tf.lite.experimental.QuantizationDebugger` makes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

VARIANTS = ("float32", "float16", "dynamic_range", "int8", "int16x8")
# Model fill values at or below this are taken for attention-mask fills.
_MASK_FILL_THRESHOLD = -1e4


class QuantizationError(RuntimeError):
    """A variant could not be produced; the message says which and why."""


@dataclass
class QuantizationRecipe:
    """How the integer variants are calibrated and quantized.

    Args:
        calibration_inputs: the signature's inputs from the train split, fed
            one by one to the calibrator: a list of {input name: array of
            batch 1}, or an int32 (examples, length) array of token ids (the
            input `token_ids`).
        mask_fill_value: replaces the attention-mask fill constant (<= -1e4)
            of the float graph before calibration; 0 keeps the model's value.
        float_ops: TFLite op names kept in float in the int8 variant (the
            quantization debugger's deny-list), e.g. ["MEAN", "RSQRT"].
        per_channel: per-channel (True) or per-tensor (False) int8 weights.
        int8_output: "float32" (dequantized probabilities) or "int8".
        int8_input: type of the int8 model's float inputs, "float32" (kept
            float, quantized inside) or "uint8" (images: the app feeds the
            pixels as they are decoded; token ids stay int32 either way).
    """

    calibration_inputs: list[dict] | np.ndarray | None = None
    mask_fill_value: float = -20.0
    float_ops: list[str] = field(default_factory=list)
    per_channel: bool = True
    int8_output: str = "float32"
    int8_input: str = "float32"

    def dataset(self, as_dict: bool = False) -> Callable[[], Iterable]:
        inputs = self.calibration_inputs
        if inputs is None or len(inputs) == 0:
            raise QuantizationError(
                "int8/int16x8 need calibration inputs (export."
                "int8_calibration_examples > 0 and a non-empty train split)")
        if isinstance(inputs, np.ndarray):
            ids = np.asarray(inputs, dtype=np.int32)
            inputs = [{"token_ids": ids[i:i + 1]} for i in range(len(ids))]

        def gen():
            for example in inputs:
                yield dict(example) if as_dict else list(example.values())
        return gen


# --------------------------------------------------------------- graph edits


def _load(model_bytes: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))


def _dump(model) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_name(model, op) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


def float_ops(model_bytes: bytes) -> dict[str, int]:
    """Op name -> how many ops of that name compute in float (a float32
    output) in a TFLite model: what stays float in an int8 variant.
    QUANTIZE/DEQUANTIZE at the float boundaries count as float too."""
    model = _load(model_bytes)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if any(i >= 0 and subgraph.tensors[i].type == 0 for i in op.outputs):  # FLOAT32
                name = _op_name(model, op)
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def set_mask_fill(model_bytes: bytes, value: float) -> tuple[bytes, int]:
    """Sets the float constant of SELECT_V2(mask, scores, fill) ops whose fill is
    <= -1e4 to `value`; returns (model, number of constants changed)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = _load(model_bytes)
    changed = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if _op_name(model, op) != "SELECT_V2" or len(op.inputs) != 3:
                continue
            tensor = subgraph.tensors[int(op.inputs[2])]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.FLOAT32 or data is None or len(data) == 0:
                continue
            values = np.frombuffer(bytes(np.asarray(data, np.uint8)), np.float32)
            if values.size and (values <= _MASK_FILL_THRESHOLD).all():
                model.buffers[tensor.buffer].data = np.frombuffer(
                    np.full(values.shape, value, np.float32).tobytes(), np.uint8)
                changed += 1
    return _dump(model), changed


def _prune(model) -> None:
    """Drops operators whose outputs nobody reads, then unused op codes."""
    for subgraph in model.subgraphs:
        while True:
            used = {int(t) for op in subgraph.operators for t in op.inputs}
            used |= {int(t) for t in subgraph.outputs}
            keep = [op for op in subgraph.operators
                    if any(int(t) in used for t in op.outputs)]
            if len(keep) == len(subgraph.operators):
                break
            subgraph.operators = keep
    codes = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators})
    remap = {old: new for new, old in enumerate(codes)}
    model.operatorCodes = [model.operatorCodes[i] for i in codes]
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            op.opcodeIndex = remap[op.opcodeIndex]


def strip_negative_index_wrap(model_bytes: bytes) -> tuple[bytes, int]:
    """Replaces SELECT_V2(LESS(ids, c), ADD(ids, n), ids) by ids (the embedding's
    negative-index wrap; token ids are never negative)."""
    model = _load(model_bytes)
    stripped = 0
    for subgraph in model.subgraphs:
        producer = {int(t): op for op in subgraph.operators for t in op.outputs}
        replace = {}
        for op in subgraph.operators:
            if _op_name(model, op) != "SELECT_V2" or len(op.inputs) != 3:
                continue
            cond, added, ids = (int(t) for t in op.inputs)
            less, add = producer.get(cond), producer.get(added)
            if less is not None and add is not None and _op_name(model, less) == "LESS" \
                    and _op_name(model, add) == "ADD" and int(less.inputs[0]) == ids \
                    and int(add.inputs[0]) == ids:
                replace[int(op.outputs[0])] = ids
        for op in subgraph.operators:
            op.inputs = np.array([replace.get(int(t), int(t)) for t in op.inputs],
                                 dtype=np.int32)
        stripped += len(replace)
    _prune(model)
    return _dump(model), stripped


def split_squared_difference(model_bytes: bytes) -> tuple[bytes, int]:
    """Rewrites SQUARED_DIFFERENCE(a, b) as d = SUB(a, b); MUL(d, d)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = _load(model_bytes)
    ops_enum = schema.BuiltinOperator

    def opcode(builtin):
        for i, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return i
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
        code.version = 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    sub_code, mul_code = opcode(ops_enum.SUB), opcode(ops_enum.MUL)
    split = 0
    for subgraph in model.subgraphs:
        operators = []
        for op in subgraph.operators:
            if _op_name(model, op) != "SQUARED_DIFFERENCE":
                operators.append(op)
                continue
            out = subgraph.tensors[int(op.outputs[0])]
            diff = schema.TensorT()
            diff.shape, diff.shapeSignature, diff.type = out.shape, out.shapeSignature, out.type
            diff.name = (out.name or b"squared_difference") + b"/difference"
            model.buffers.append(schema.BufferT())
            diff.buffer = len(model.buffers) - 1
            subgraph.tensors.append(diff)
            d = len(subgraph.tensors) - 1
            sub = schema.OperatorT()
            sub.opcodeIndex, sub.inputs = sub_code, np.array(op.inputs, np.int32)
            sub.outputs = np.array([d], np.int32)
            sub.builtinOptionsType = schema.BuiltinOptions.SubOptions
            sub.builtinOptions = schema.SubOptionsT()
            mul = schema.OperatorT()
            mul.opcodeIndex, mul.inputs = mul_code, np.array([d, d], np.int32)
            mul.outputs = np.array(op.outputs, np.int32)
            mul.builtinOptionsType = schema.BuiltinOptions.MulOptions
            mul.builtinOptions = schema.MulOptionsT()
            operators += [sub, mul]
            split += 1
        subgraph.operators = operators
    _prune(model)
    return _dump(model), split


# ------------------------------------------------------------------- recipes


def _converter(saved_model_dir: str, signatures):
    """The converter of `signatures` (a name or a list of names)."""
    import tensorflow as tf

    keys = [signatures] if isinstance(signatures, str) else list(signatures)
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=keys)


def float16(saved_model_dir: str, signature) -> bytes:
    import tensorflow as tf

    converter = _converter(saved_model_dir, signature)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def dynamic_range(saved_model_dir: str, signature) -> bytes:
    import tensorflow as tf

    converter = _converter(saved_model_dir, signature)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _float_graph(saved_model_dir: str, signature: str, recipe: QuantizationRecipe,
                 log) -> bytes:
    model = _converter(saved_model_dir, signature).convert()
    if recipe.mask_fill_value:
        model, changed = set_mask_fill(model, recipe.mask_fill_value)
        log(f"[quantize] attention mask fill -> {recipe.mask_fill_value:g} "
            f"({changed} constant{'s' if changed != 1 else ''})")
    return model


def int8(saved_model_dir: str, signature: str, recipe: QuantizationRecipe,
         log=print) -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python import convert
    from tensorflow.lite.python.optimize import calibrator

    if recipe.int8_output not in ("float32", "int8"):
        raise QuantizationError("int8 output type must be 'float32' or 'int8', got "
                                f"{recipe.int8_output!r}")
    if recipe.int8_input not in ("float32", "uint8", "int8"):
        raise QuantizationError("int8 input type must be 'float32', 'uint8' or 'int8', "
                                f"got {recipe.int8_input!r}")
    model = _float_graph(saved_model_dir, signature, recipe, log)
    calibrated = calibrator.Calibrator(calibrator.add_intermediate_tensors(model)) \
        .calibrate(recipe.dataset())
    int8_out = recipe.int8_output == "int8"
    return convert.mlir_quantize(
        calibrated, disable_per_channel=not recipe.per_channel,
        fully_quantize=int8_out,
        input_data_type={"float32": tf.float32, "uint8": tf.uint8,
                         "int8": tf.int8}[recipe.int8_input],
        output_data_type=tf.int8 if int8_out else tf.float32,
        denylisted_ops=list(recipe.float_ops) or None)


def int16x8(saved_model_dir: str, signature: str, recipe: QuantizationRecipe,
            log=print) -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    model = _float_graph(saved_model_dir, signature, recipe, log)
    model, _ = strip_negative_index_wrap(model)
    model, _ = split_squared_difference(model)
    return calibrator.Calibrator(calibrator.add_intermediate_tensors(model)) \
        .calibrate_and_quantize(recipe.dataset(), tf.float32, tf.float32,
                                allow_float=True, activations_type=tf.int16,
                                bias_type=tf.int64,
                                disable_per_channel=not recipe.per_channel)
