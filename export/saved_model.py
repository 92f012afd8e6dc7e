"""SavedModel for TF Serving: raw strings in, label / class id / probabilities out.

Signatures of artifacts/<exp>/serving/<model_name>/<version>/:

  serving_default  text: string (batch,)
                   -> label: string (batch,), class_id: int32 (batch,),
                      probabilities: float32 (batch, num_classes)
  token_ids        token_ids: int32 (batch, seq <= max_sequence_length)
                   -> class_id, probabilities
  tokenize         text: string (batch,) -> token_ids: int32 (batch, max_sequence_length)

Tokenization (tensorflow-text SentencePiece) is inside the graph. The version
directory is written under a temporary name and renamed when complete, so a
crash mid-export leaves the previous versions untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import time

import keras
import tensorflow as tf

from pipeline.tokenizer import PAD_ID, InGraphTokenizer, read_model


def float32_model(model: keras.Model) -> keras.Model:
    """The model itself when float32, else a float32 copy with the same weights."""
    if keras.config.dtype_policy().name == "float32" and \
            model.dtype_policy.name == "float32":
        return model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        config = model.get_config()
        config.pop("dtype", None)
        copy = type(model).from_config(config)
        length = model.max_sequence_length
        copy({"token_ids": tf.zeros((1, length), tf.int32),
              "padding_mask": tf.ones((1, length), tf.bool)})
        copy.set_weights([w.numpy() if hasattr(w, "numpy") else w
                          for w in model.get_weights()])
    finally:
        keras.config.set_dtype_policy(previous)
    return copy


def next_version(model_root: str) -> int:
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()] \
        if os.path.isdir(model_root) else []
    return max(versions, default=0) + 1


def _exchange(path_a: str, path_b: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 with
    RENAME_EXCHANGE); False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(path_a), at_fdcwd, os.fsencode(path_b),
                 rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), path_b)


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Moves a completed tmp_dir to final_dir.

    An existing final_dir is exchanged with tmp_dir in one atomic step (Linux),
    so a reader, or a kill at any moment, finds the old or the new directory,
    never none; elsewhere it is renamed aside first.
    """
    if not os.path.exists(final_dir):
        os.rename(tmp_dir, final_dir)
        return
    if _exchange(tmp_dir, final_dir):
        shutil.rmtree(tmp_dir, ignore_errors=True)   # tmp_dir now holds the old one
        return
    old = f"{final_dir}.old-{os.getpid()}"
    os.rename(final_dir, old)
    os.rename(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(directory: str, pattern: str) -> list[str]:
    """Removes the entries of `directory` that a killed export left behind: names
    matching `pattern`, whose group 1 is the writer's pid, when that process is gone."""
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        match = re.fullmatch(pattern, entry)
        if not match or _process_alive(int(match.group(1))):
            continue
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. another user's process
        return True
    return True


def build_serving_archive(model: keras.Model, tokenizer_path: str,
                          label_names: list[str]) -> keras.export.ExportArchive:
    model = float32_model(model)
    length = model.max_sequence_length
    tokenizer = InGraphTokenizer(read_model(tokenizer_path), length)
    labels = tf.constant(label_names)

    def classify(token_ids):
        probabilities = tf.nn.softmax(model(
            {"token_ids": token_ids, "padding_mask": tf.not_equal(token_ids, PAD_ID)},
            training=False), axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return class_id, probabilities

    def serve_text(text):
        class_id, probabilities = classify(tokenizer(text))
        return {"label": tf.gather(labels, class_id), "class_id": class_id,
                "probabilities": probabilities}

    def serve_token_ids(token_ids):
        token_ids = token_ids[:, :length]
        class_id, probabilities = classify(token_ids)
        return {"class_id": class_id, "probabilities": probabilities}

    def tokenize(text):
        return {"token_ids": tokenizer(text)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tokenizer.tokenizer)
    archive.add_endpoint("serving_default", serve_text,
                         input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    archive.add_endpoint("token_ids", serve_token_ids, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    archive.add_endpoint("tokenize", tokenize, input_signature=[
        tf.TensorSpec([None], tf.string, name="text")])
    return archive


def export_serving(model: keras.Model, tokenizer_path: str, label_names: list[str],
                   serving_root: str, model_name: str, version: int = 0,
                   log=print, warmup_texts: list[str] | None = None,
                   check_ops: bool = True) -> str:
    """Writes serving_root/model_name/<version>/ atomically; returns its path.

    With `warmup_texts`, assets.extra/tf_serving_warmup_requests holds TF Serving
    warm-up PredictRequests built from them. With `check_ops`, the op check of
    export.check_serving runs on the finished temp dir; a failure removes it and
    raises ServingCheckError, leaving the previous versions as they were.
    """
    start = time.time()
    model_root = os.path.join(serving_root, model_name)
    version = version or next_version(model_root)
    final_dir = os.path.join(model_root, str(version))
    tmp_dir = os.path.join(model_root, f".tmp-{version}-{os.getpid()}")
    os.makedirs(model_root, exist_ok=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    remove_stale_temps(model_root, r"\.tmp-\d+-(\d+)")   # left by a killed export
    try:
        archive = build_serving_archive(model, tokenizer_path, label_names)
        archive.write_out(tmp_dir, verbose=False)
        extra = os.path.join(tmp_dir, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        shutil.copy(tokenizer_path, os.path.join(extra, "spm.model"))
        with open(os.path.join(extra, "labels.txt"), "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in label_names))
        if warmup_texts:
            from export.warmup import write_warmup_requests

            write_warmup_requests(tmp_dir, list(warmup_texts), model_name)
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


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)
