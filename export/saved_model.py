"""SavedModel for TF Serving, written atomically, for every task.

The signatures come from the task's export module (`serving_archive()`); for
text classification:

  serving_default  text: string (batch,)
                   -> label: string (batch,), class_id: int32 (batch,),
                      probabilities: float32 (batch, num_classes)
  token_ids        token_ids: int32 (batch, seq <= max_sequence_length)
                   -> class_id, probabilities
  tokenize         text: string (batch,) -> token_ids: int32 (batch, max_sequence_length)

Tokenization (tensorflow-text) is inside the graph. The version directory is
written under a temporary name and renamed when complete, so a crash
mid-export leaves the previous versions untouched.
"""

from __future__ import annotations

import os
import shutil
import time

import keras

from pipeline.files import (
    dir_size,
    remove_stale_temps,
    replace_dir,
    temp_dir_path,
    temp_dir_pattern,
)

__all__ = ["dir_size", "export_serving", "float32_model", "next_version",
           "remove_stale_temps", "replace_dir"]


def float32_model(model: keras.Model, task=None) -> keras.Model:
    """The model itself when float32, else a float32 copy with the same
    weights (built by the task's `build_model` under a float32 policy)."""
    if keras.config.dtype_policy().name == "float32" and \
            model.dtype_policy.name == "float32":
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = task.build_model()
        copy.set_weights([w.numpy() if hasattr(w, "numpy") else w
                          for w in model.get_weights()])
    finally:
        keras.config.set_dtype_policy(previous)
    return copy


def next_version(model_root: str) -> int:
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()] \
        if os.path.isdir(model_root) else []
    return max(versions, default=0) + 1


def export_serving(module, serving_root: str, model_name: str, version: int = 0,
                   log=print, check_ops: bool = True) -> str:
    """Writes serving_root/model_name/<version>/ atomically; returns its path.

    `module` is the task's export module: its `serving_archive()`, its
    `serving_assets()` copied to assets.extra/, and its `warmup_requests()`
    as assets.extra/tf_serving_warmup_requests. With `check_ops`, the op check
    of export.check_serving runs on the finished temp dir; a failure removes it
    and raises ServingCheckError, leaving the previous versions as they were.
    """
    start = time.time()
    model_root = os.path.join(serving_root, model_name)
    version = version or next_version(model_root)
    final_dir = os.path.join(model_root, str(version))
    tmp_dir = temp_dir_path(final_dir)
    os.makedirs(model_root, exist_ok=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    remove_stale_temps(model_root, temp_dir_pattern(r"\d+"))   # left by a killed export
    try:
        module.serving_archive().write_out(tmp_dir, verbose=False)
        extra = os.path.join(tmp_dir, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        for name, source in module.serving_assets().items():
            shutil.copy(source, os.path.join(extra, name))
        requests = module.warmup_requests()
        if requests:
            from export.warmup import write_warmup_requests

            write_warmup_requests(tmp_dir, requests, model_name)
        if check_ops:
            from export.check_serving import ServingCheckError, check_saved_model

            result = check_saved_model(tmp_dir)
            if not result.ok:
                raise ServingCheckError(result.error())
            log(f"[export] op check: {len(result.ops)} op types, all TF core or "
                "tensorflow-text (python -m export.check_serving <dir> lists them)")
    except BaseException:
        # An error in this process removes its own temp dir (a kill leaves it to
        # remove_stale_temps of the next export); the previous versions stay.
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    replace_dir(tmp_dir, final_dir)
    log(f"[export] SavedModel {final_dir} ({dir_size(final_dir) / 1e6:.1f} MB, "
        f"{time.time() - start:.1f}s)")
    return final_dir
