"""Checks that TF Serving can load a SavedModel: every op is TF core or tensorflow-text.

    python -m export.check_serving artifacts/<exp>/serving/<name>/<version>

TF Serving's model server links the TF core kernels and, since 2.2, the
tensorflow-text op library; a graph holding any other op fails to load with
"Op type not registered" (tensorflow/serving#1490, #2064). This lists every op
of every MetaGraph and of all their function libraries, and fails naming each
op that is outside that set.

The allowed set comes from the op registry itself, in a clean subprocess:
the ops registered after `import tensorflow` (TF core), then the ops that
`import tensorflow_text` adds. Ops TF registers only to call back into Python
(PyFunc, PyFuncStateless, EagerPyFunc from tf.py_function / tf.numpy_function)
are rejected: the model server has no Python interpreter. The registry listing
is cached per (Python, tensorflow, tensorflow-text) version under
~/.cache/tf-serving-op-check/ since it costs one TensorFlow import.

Exit status: 0 when every op is allowed, 1 naming the offending ops, 2 when the
directory holds no SavedModel.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata

# Registered by TF core but implemented by calling back into the Python process.
PYTHON_ONLY_OPS = {
    "PyFunc": "tf.numpy_function / tf.compat.v1.py_func",
    "PyFuncStateless": "tf.numpy_function(stateful=False)",
    "EagerPyFunc": "tf.py_function",
}

_REGISTRY_SCRIPT = r"""
import json
import tensorflow as tf
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session as c_api

def names():
    buf = c_api.TF_GetAllOpList()
    try:
        ops = op_def_pb2.OpList.FromString(c_api.TF_GetBuffer(buf))
    finally:
        c_api.TF_DeleteBuffer(buf)
    return {op.name for op in ops.op}

core = names()
import tensorflow_text
text = names() - core
print(json.dumps({"tensorflow": tf.__version__,
                  "tensorflow_text": tensorflow_text.__version__,
                  "core": sorted(core), "text": sorted(text)}))
"""


class NoSavedModel(Exception):
    """The directory holds no saved_model.pb / saved_model.pbtxt."""


class ServingCheckError(RuntimeError):
    """A SavedModel holds ops the TF Serving model server cannot run."""


@dataclasses.dataclass
class OpCheck:
    """The result of a check: op -> places it appears, and the verdicts."""

    ops: dict[str, list[str]]            # op type -> ["graph", "function <name>", ...]
    core: set[str]                       # ops of the graph registered by TF core
    text: set[str]                       # ops of the graph registered by tensorflow-text
    offending: dict[str, str]            # op type -> why TF Serving cannot run it
    versions: dict[str, str]             # tensorflow / tensorflow_text versions checked

    @property
    def ok(self) -> bool:
        return not self.offending

    def summary(self) -> str:
        lines = [f"{'op':<36} {'uses':>5}  registered by"]
        for op in sorted(self.ops):
            where = ("tensorflow-text" if op in self.text else "TF core"
                     if op in self.core and op not in self.offending else
                     f"NOT SERVABLE: {self.offending.get(op, '')}")
            lines.append(f"{op:<36} {len(self.ops[op]):>5}  {where}")
        functions = {w for places in self.ops.values() for w in places if w != "graph"}
        lines.append(
            f"{len(self.ops)} op types in the graph and {len(functions)} library "
            f"functions: {len(self.core - set(self.offending))} TF core, "
            f"{len(self.text)} tensorflow-text, {len(self.offending)} not servable "
            f"(tensorflow {self.versions['tensorflow']}, tensorflow-text "
            f"{self.versions['tensorflow_text']})")
        return "\n".join(lines)

    def error(self) -> str:
        parts = []
        for op, why in sorted(self.offending.items()):
            places = sorted(set(self.ops[op]))
            shown = ", ".join(places[:3]) + (" ..." if len(places) > 3 else "")
            parts.append(f"{op} ({why}; in {shown})")
        return ("TF Serving cannot load this SavedModel: ops outside TF core and "
                "tensorflow-text: " + "; ".join(parts))


def read_saved_model(saved_model_dir: str):
    pb = os.path.join(saved_model_dir, "saved_model.pb")
    pbtxt = os.path.join(saved_model_dir, "saved_model.pbtxt")
    if not os.path.isfile(pb) and not os.path.isfile(pbtxt):
        raise NoSavedModel(f"no saved_model.pb or saved_model.pbtxt in {saved_model_dir!r} "
                           "(pass a version directory such as .../text_classifier/1)")
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with open(pbtxt, encoding="utf-8") as f:
            text_format.Parse(f.read(), saved_model)
    return saved_model


def saved_model_ops(saved_model) -> dict[str, list[str]]:
    """Op type -> where each use is: 'graph' or 'function <name>'.

    Nodes whose op names a library function (a direct function call) are calls,
    not ops; the function's own nodes are listed instead.
    """
    ops = collections.defaultdict(list)
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        functions = {f.signature.name for f in library.function}
        for node in meta_graph.graph_def.node:
            if node.op not in functions:
                ops[node.op].append("graph")
        for function in library.function:
            for node in function.node_def:
                if node.op not in functions:
                    ops[node.op].append(f"function {function.signature.name}")
    return dict(ops)


def _cache_path() -> str:
    key = "|".join([sys.executable, metadata.version("tensorflow"),
                    metadata.version("tensorflow-text")])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(root, "tf-serving-op-check", f"registry-{digest}.json")


def registered_ops(use_cache: bool = True) -> dict:
    """{"core": [...], "text": [...], "tensorflow": ver, "tensorflow_text": ver}."""
    path = _cache_path()
    if use_cache and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            pass  # a broken cache is recomputed
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", _REGISTRY_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError("could not list the registered TensorFlow ops: "
                           + out.stderr.strip()[-2000:])
    registry = json.loads(out.stdout.strip().splitlines()[-1])
    if use_cache:
        try:
            from pipeline.files import write_atomic

            write_atomic(path, json.dumps(registry))
        except OSError:
            pass  # caching is an optimisation only
    return registry


def check_saved_model(saved_model_dir: str, use_cache: bool = True) -> OpCheck:
    ops = saved_model_ops(read_saved_model(saved_model_dir))
    registry = registered_ops(use_cache)
    core_registered, text_registered = set(registry["core"]), set(registry["text"])
    offending = {}
    for op in ops:
        if op in PYTHON_ONLY_OPS:
            offending[op] = (f"calls back into Python ({PYTHON_ONLY_OPS[op]}); the "
                             "model server has no Python")
        elif op not in core_registered and op not in text_registered:
            offending[op] = "registered by neither TF core nor tensorflow-text"
    return OpCheck(ops=ops, core=set(ops) & core_registered,
                   text=set(ops) & text_registered, offending=offending,
                   versions={k: registry[k] for k in ("tensorflow", "tensorflow_text")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.check_serving",
        description="List every op of a SavedModel and fail if TF Serving (TF core + "
                    "tensorflow-text ops) cannot run one.",
        epilog="example: python -m export.check_serving "
               "artifacts/text_classification/serving/text_classifier/1")
    parser.add_argument("saved_model_dir", help="a SavedModel version directory")
    parser.add_argument("--no_cache", action="store_true",
                        help="list the op registry afresh instead of using the cache")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict")
    args = parser.parse_args(argv)
    try:
        result = check_saved_model(args.saved_model_dir, use_cache=not args.no_cache)
    except NoSavedModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(result.summary())
    if not result.ok:
        print(f"error: {result.error()}", file=sys.stderr)
        return 1
    print(f"OK: TF Serving can run every op of {args.saved_model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
