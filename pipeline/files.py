"""The one place that writes files atomically, and other small file helpers.

Every artifact (configs, JSON, tokenizers, labels, TFLite files, PNGs,
checkpoint side files, SavedModel versions, the edge bundle) is written under
a temporary name in the destination's directory and renamed when complete, so
a reader, or a kill at any moment, finds the previous file or the new one,
whole. Temporary names carry the writer's pid (files `<name>.tmp-<pid>`,
directories `.<name>.tmp-<pid>`, hidden from TF Serving's version scan), which
lets the next writer remove what a killed one left behind
(`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys

LABELS_FILE = "labels.txt"


def temp_path(path: str) -> str:
    """The temporary name `path` is written under: `<path>.tmp-<pid>`, or, for a
    name with an extension, `<stem>.tmp-<pid><ext>` (matplotlib picks the
    format from the extension)."""
    stem, ext = os.path.splitext(path)
    if ext in (".png", ".svg", ".pdf"):
        return f"{stem}.tmp-{os.getpid()}{ext}"
    return f"{path}.tmp-{os.getpid()}"


def temp_dir_path(final_dir: str) -> str:
    """The hidden temporary directory `final_dir` is assembled in before
    `replace_dir`: `<parent>/.<name>.tmp-<pid>`."""
    parent, name = os.path.split(os.path.abspath(final_dir))
    return os.path.join(parent, f".{name}.tmp-{os.getpid()}")


def temp_dir_pattern(name_regex: str) -> str:
    """The `remove_stale_temps` pattern of `temp_dir_path`s of names matching
    `name_regex` (group 1: the writer's pid)."""
    return rf"\.{name_regex}\.tmp-(\d+)"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path to write; renames it over `path` on success and
    removes it on an error."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)


def write_atomic(path: str, data: bytes | str) -> str:
    """Writes bytes (or UTF-8 text) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
    return path


def write_json(path: str, data) -> str:
    """Writes `data` as indented JSON atomically."""
    return write_atomic(path, json.dumps(data, indent=2))


def copy_atomic(source: str, path: str) -> str:
    """Copies `source` to `path` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


def write_labels(names, out_dir: str, filename: str = LABELS_FILE) -> str:
    """One label per line, in class-id order; returns the file's path."""
    return write_atomic(os.path.join(out_dir, filename), "".join(f"{n}\n" for n in names))


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


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
    """Removes the entries of `directory` that a killed writer left behind: names
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


def hash_split(key: str) -> str:
    """Stable train/validation/test (80/10/10) assignment by the md5 of `key`:
    the one split rule of every source (a synset offset, a text)."""
    bucket = int(hashlib.md5(key.encode("utf-8", "surrogatepass")).hexdigest(), 16) % 100
    if bucket < 80:
        return "train"
    return "validation" if bucket < 90 else "test"
