"""What the tests of the edge app share, whatever the bundle's task: the app module
(loaded once by file path), running it as a subprocess (with the main venv, optionally
with modules blocked from importing, or with another Python such as a clean venv's), and
a venv built from edge/requirements.txt alone (the `edge_venv` fixture of conftest.py).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "edge" / "app.py"
REQUIREMENTS = REPO / "edge" / "requirements.txt"


def load_app():
    """edge/app.py as the module `edge_app`, executed once per test session."""
    if "edge_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("edge_app", APP)
        module = importlib.util.module_from_spec(spec)
        sys.modules["edge_app"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["edge_app"]


app = load_app()


def run_app(*args, input=None, timeout=120, python=sys.executable, **kw):
    return subprocess.run([str(python), str(APP), *map(str, args)], input=input,
                          capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          check=False, **kw)


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked by test: " + name)
    sys.meta_path.insert(0, Block())
    sys.argv = [{app!r}] + {argv!r}
    sys.path.insert(0, {edge!r})
    import runpy
    try:
        runpy.run_path({app!r}, run_name="__main__")
    finally:
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
        print("HEAVY_MODULES=" + ",".join(heavy), file=sys.stderr)
""")


def run_blocked(blocked, argv, **kw):
    """The app with the top-level packages `blocked` unimportable; stderr ends with
    HEAVY_MODULES=<ML framework modules that were imported anyway>."""
    code = BLOCKER.format(blocked=tuple(blocked), app=str(APP), argv=[str(a) for a in argv],
                          edge=str(APP.parent))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False, **kw)


def make_edge_venv(directory: Path) -> Path:
    """A fresh venv with edge/requirements.txt alone; returns its python. tensorflow must
    not be importable there."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=300)
    py = directory / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert pip.returncode == 0, pip.stderr[-3000:]
    tf = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True, text=True,
                        timeout=120, check=False)
    assert tf.returncode != 0 and "ModuleNotFoundError" in tf.stderr
    return py
