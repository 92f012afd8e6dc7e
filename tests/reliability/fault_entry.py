"""`python tests/reliability/fault_entry.py <command> <config> [--set ...]`: exactly
`python -m pipeline ...`, plus pause points for the fault-injection tests.

With RELIABILITY_PAUSE_AT="<point>:<n>" the process prints
"[fault] paused at <point> #<n>: <detail>" the n-th time it reaches <point> and
stops itself (SIGSTOP); the test then looks at the files as they are at that
moment and ends the process with SIGKILL (kill -9). The points are moments
inside writes too short to hit from outside by timing:

  checkpoint.shards_written  a checkpoint's tensors are written under <prefix>_temp/,
                             not yet merged into <prefix>.index / .data-*
  checkpoint.merged          <prefix>.index / .data-* complete, the `checkpoint`
                             state file not yet updated
  checkpoint.state_renaming  the new state file is written under a temporary name,
                             not yet renamed over `checkpoint`
  savedmodel.shards_written, savedmodel.merged   the same inside the SavedModel's
                             variables/ while export.saved_model writes a version
  savedmodel.renaming        the version is complete under .<v>.tmp-<pid>, not renamed
  tflite.converting          the converter's source SavedModel is written, the
                             conversion starts
  tflite.renaming            <variant>.tflite.tmp-<pid> is written, not renamed
  bundle.copying             model.tflite is copied into .bundle.tmp-<pid>, the rest not
  bundle.renaming            the new bundle is complete under .bundle.tmp-<pid>
  bundle.swapped             the first rename of the swap has returned

Without RELIABILITY_PAUSE_AT nothing is changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

_context = ["checkpoint"]
_counts: dict[str, int] = {}


def reach(point: str, detail: str = "") -> None:
    target, _, nth = os.environ["RELIABILITY_PAUSE_AT"].partition(":")
    if point != target:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(nth or 1):
        print(f"[fault] paused at {point} #{_counts[point]}: {detail}", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


@contextlib.contextmanager
def context(name: str):
    _context.append(name)
    try:
        yield
    finally:
        _context.pop()


def _in_context(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with context(name):
            return function(*args, **kwargs)
    return wrapper


def _before(point: str, function, detail=lambda *a, **k: ""):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        reach(point, detail(*args, **kwargs))
        return function(*args, **kwargs)
    return wrapper


def install() -> None:
    import shutil

    from tensorflow.python.lib.io import file_io
    from tensorflow.python.ops import gen_io_ops

    import export.bundle
    import export.saved_model
    import export.tflite
    import pipeline.files

    merge = gen_io_ops.merge_v2_checkpoints

    def merge_v2_checkpoints(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        where = str(getattr(destination_prefix, "numpy", lambda: destination_prefix)())
        reach(f"{_context[-1]}.shards_written", where)
        result = merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)
        reach(f"{_context[-1]}.merged", where)
        return result

    gen_io_ops.merge_v2_checkpoints = merge_v2_checkpoints

    rename = file_io.rename

    def file_io_rename(oldname, newname, overwrite=False):
        if os.path.basename(str(newname)) == "checkpoint":
            reach("checkpoint.state_renaming", f"{oldname} -> {newname}")
        return rename(oldname, newname, overwrite)

    file_io.rename = file_io_rename

    # SavedModel export: variables written inside export_serving, then the rename
    export.saved_model.export_serving = _in_context(
        "savedmodel", export.saved_model.export_serving)
    replace_dir = export.saved_model.replace_dir
    export.saved_model.replace_dir = _before(
        "savedmodel.renaming", replace_dir, lambda tmp, final: f"{tmp} -> {final}")

    # TFLite conversion
    export.tflite.export_tflite = _in_context("tflite", export.tflite.export_tflite)
    export.tflite.convert = _before("tflite.converting", export.tflite.convert,
                                    lambda source, variant, *a, **k: variant)
    os_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if _context[-1] == "tflite" and str(dst).endswith(".tflite"):
            reach("tflite.renaming", f"{src} -> {dst}")
        return os_replace(src, dst, *args, **kwargs)

    os.replace = replace

    # the edge bundle
    export.bundle.write_bundle = _in_context("bundle", export.bundle.write_bundle)
    copy = shutil.copy

    def shutil_copy(src, dst, *args, **kwargs):
        result = copy(src, dst, *args, **kwargs)
        if _context[-1] == "bundle" and os.path.basename(str(dst)) == "model.tflite":
            reach("bundle.copying", str(dst))
        return result

    shutil.copy = shutil_copy

    def bundle_replace_dir(tmp, final):
        reach("bundle.renaming", f"{tmp} -> {final}")
        with context("bundle_swap"):
            return replace_dir(tmp, final)

    export.bundle.replace_dir = bundle_replace_dir
    os_rename = os.rename

    def rename_in_swap(src, dst, *args, **kwargs):
        result = os_rename(src, dst, *args, **kwargs)
        if _context[-1] == "bundle_swap":
            reach("bundle.swapped", f"rename {src} -> {dst}")
        return result

    os.rename = rename_in_swap
    exchange = pipeline.files._exchange

    def exchange_in_swap(a, b):
        swapped = exchange(a, b)
        if swapped and _context[-1] == "bundle_swap":
            reach("bundle.swapped", f"exchange {a} <-> {b}")
        return swapped

    pipeline.files._exchange = exchange_in_swap


if __name__ == "__main__":
    if os.environ.get("RELIABILITY_PAUSE_AT"):
        install()
    from pipeline.cli import main

    sys.exit(main(sys.argv[1:]))
