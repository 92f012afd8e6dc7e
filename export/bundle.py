"""Edge bundle: model.tflite + the task's files + manifest.json.

The manifest names the task (the edge app picks its runner by it), every
TFLite signature's tensors (name, dtype, shape, quantization), the task's own
keys (for text classification: tokenizer, labels, max_sequence_length, ...)
and the sha256 of every file; the app refuses a bundle whose files do not
match. The bundle is assembled under a temporary name and swapped in when
complete, in one atomic step (pipeline.files.replace_dir): a kill at any
moment leaves the previous bundle or the new one, complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from export.tflite import signature_details
from pipeline.files import remove_stale_temps, replace_dir, sha256, temp_dir_path, temp_dir_pattern

PIPELINE_VERSION = "0.2.0"
MODEL_FILE = "model.tflite"

__all__ = ["MODEL_FILE", "PIPELINE_VERSION", "sha256", "write_bundle"]


def write_bundle(bundle_dir: str, tflite_path: str, task: str,
                 files: dict[str, str] | None = None, manifest: dict | None = None,
                 variant: str = "", extra: dict | None = None, log=print) -> str:
    """Writes the bundle; returns its directory.

    Args:
        tflite_path: the variant copied to model.tflite.
        task: the task name the edge app dispatches on.
        files: bundle file name -> source path (tokenizers, labels).
        manifest: the task's manifest keys (its export module's
            `bundle_manifest()`).
        extra: further manifest keys (the variant choice, metrics).
    """
    parent = os.path.dirname(os.path.abspath(bundle_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = temp_dir_path(bundle_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    name = re.escape(os.path.basename(os.path.abspath(bundle_dir)))
    for pattern in (temp_dir_pattern(name), name + r"\.old-(\d+)"):  # a killed export's
        remove_stale_temps(parent, pattern)
    os.makedirs(tmp)
    shutil.copy(tflite_path, os.path.join(tmp, MODEL_FILE))
    files = dict(files or {})
    for file_name, source in files.items():
        shutil.copy(source, os.path.join(tmp, file_name))
    signatures = signature_details(os.path.join(tmp, MODEL_FILE))
    content = {"format_version": 1, "task": task, "model": MODEL_FILE}
    content.update(manifest or {})
    content.update({
        "variant": variant,
        # every signature's inputs and outputs: name, dtype, shape and
        # quantization {scale, zero_point} (scale 0 = not quantized)
        "signatures": signatures,
        "pipeline_version": PIPELINE_VERSION,
        "files": {n: sha256(os.path.join(tmp, n)) for n in (MODEL_FILE, *files)},
    })
    content.update(extra or {})
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(content, f, indent=2)
    replace_dir(tmp, bundle_dir)
    log(f"[export] edge bundle {bundle_dir} ({task}, {variant})")
    return bundle_dir
