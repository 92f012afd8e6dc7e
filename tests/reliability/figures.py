"""Figures of the reliability suite: faults injected and survived, inputs tried,
requests served. The tests add to them; tests/reliability/conftest.py prints them
at the end of the run (and writes them as JSON to $RELIABILITY_FIGURES when set),
which is where the README's "Guarantees" figures come from."""

from __future__ import annotations

import collections
import threading

_lock = threading.Lock()
counts: collections.Counter = collections.Counter()
notes: dict[str, object] = {}


def add(name: str, n: int = 1) -> None:
    with _lock:
        counts[name] += n


def note(name: str, value) -> None:
    with _lock:
        notes[name] = value
