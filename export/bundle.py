"""Edge bundle: model.tflite + spm.model + labels.txt + manifest.json.

The manifest holds what the app needs to tokenize and read the model, and the
sha256 of every file; the app refuses a bundle whose files do not match.
The bundle is assembled under a temporary name and swapped in when complete, in
one atomic step (export.saved_model.replace_dir): a kill at any moment leaves
the previous bundle or the new one, complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

from export.saved_model import remove_stale_temps, replace_dir
from export.tflite import INPUT_NAME, OUTPUT_NAME, tensor_details
from pipeline.tokenizer import PAD_ID, max_text_bytes

PIPELINE_VERSION = "0.1.0"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(bundle_dir: str, tflite_path: str, tokenizer_path: str,
                 label_names: list[str], max_sequence_length: int, variant: str,
                 extra: dict | None = None, log=print) -> str:
    parent = os.path.dirname(os.path.abspath(bundle_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".bundle-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    name = re.escape(os.path.basename(os.path.abspath(bundle_dir)))
    for pattern in (r"\.bundle-tmp-(\d+)", name + r"\.old-(\d+)"):  # a killed export's
        remove_stale_temps(parent, pattern)
    os.makedirs(tmp)
    shutil.copy(tflite_path, os.path.join(tmp, "model.tflite"))
    shutil.copy(tokenizer_path, os.path.join(tmp, "spm.model"))
    with open(os.path.join(tmp, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in label_names))
    files = ("model.tflite", "spm.model", "labels.txt")
    manifest = {
        "format_version": 1,
        "task": "text_classification",
        "model": "model.tflite", "tokenizer": "spm.model", "labels": "labels.txt",
        "max_sequence_length": max_sequence_length,
        "max_text_bytes": max_text_bytes(max_sequence_length),
        "pad_id": PAD_ID,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "variant": variant,
        # name, dtype, shape and quantization {scale, zero_point} of the
        # signature's input and output (scale 0 = not quantized)
        "tensors": tensor_details(os.path.join(tmp, "model.tflite")),
        "pipeline_version": PIPELINE_VERSION,
        "files": {name: sha256(os.path.join(tmp, name)) for name in files},
    }
    manifest.update(extra or {})
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    replace_dir(tmp, bundle_dir)
    log(f"[export] edge bundle {bundle_dir} ({variant})")
    return bundle_dir
