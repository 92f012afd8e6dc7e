"""Shared helpers of the TFLite tests of `models/`: write an ExportArchive,
convert it on builtins only (DESIGN.md's recipe) and list the ops of the
flatbuffer."""

import tensorflow as tf


def convert_builtins_only(saved_model_dir, signature_keys):
    """The TFLite flatbuffer of `signature_keys` of a SavedModel (e.g. one
    written by `keras.export.ExportArchive`), converted with
    `supported_ops=[TFLITE_BUILTINS]` only, so that a Flex op fails the
    conversion (ai-edge-litert has no Flex delegate)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=list(signature_keys)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def convert_archive(archive, saved_model_dir, signature_keys):
    """Writes a `keras.export.ExportArchive` to `saved_model_dir` and converts
    it with `convert_builtins_only`; returns the flatbuffer."""
    archive.write_out(str(saved_model_dir), verbose=False)
    return convert_builtins_only(str(saved_model_dir), signature_keys)


def _ops(flatbuffer):
    """(name, is_custom) of every op of every subgraph; a custom (e.g. Flex)
    op is named by its custom code."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    ops = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name == "CUSTOM":
                code = model.operatorCodes[op.opcodeIndex].customCode
                ops.add((bytes(code).decode(), True))
            else:
                ops.add((name, False))
    return ops


def op_names(flatbuffer):
    """The op names of every subgraph; custom (e.g. Flex) ops by their code."""
    return {name for name, _ in _ops(flatbuffer)}


def assert_builtins_only(flatbuffer):
    """Asserts that every op of the flatbuffer is a TFLite builtin (no Flex,
    no other custom op); returns the op names."""
    custom = {name for name, is_custom in _ops(flatbuffer) if is_custom}
    assert not custom, f"custom (Flex?) ops in the TFLite model: {sorted(custom)}"
    return op_names(flatbuffer)
