"""A pipeline run as a child process whose output lines are read as they come, so a
test can kill it (SIGKILL) at a moment chosen from what it has printed."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from tests.conftest import ROOT

FAULT_ENTRY = os.path.join(ROOT, "tests", "reliability", "fault_entry.py")


@dataclass
class Outcome:
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)   # (seconds since start, line)
    killed_at: float | None = None
    paused: str | None = None          # the "[fault] paused at ..." line, if any

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str) -> float | None:
        """Time of the first line matching the regex, or None."""
        for t, line in self.lines:
            if re.search(pattern, line):
                return t
        return None


def pipeline_command(command: str, config: str, overrides: list[str]) -> list[str]:
    args = [sys.executable, "-u", FAULT_ENTRY, command, config]
    for override in overrides:
        args += ["--set", override]
    return args


def run(args: list[str], *, kill_after: tuple[str, float] | None = None,
        pause_at: str | None = None, on_pause=None, timeout: float = 300.0) -> Outcome:
    """Runs args; returns its outcome.

    kill_after=(regex, seconds): SIGKILL the process `seconds` after the first output
    line matching regex. pause_at="<point>:<n>": the process stops itself there
    (tests/reliability/fault_entry.py); on_pause(line) is called while it is
    stopped, then it is killed with SIGKILL.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RELIABILITY_PAUSE_AT", None)
    if pause_at:
        env["RELIABILITY_PAUSE_AT"] = pause_at
    start = time.monotonic()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=ROOT, env=env, text=True, errors="replace", bufsize=1)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put((time.monotonic() - start, line.rstrip("\n")))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outcome = Outcome(returncode=0)
    deadline = start + timeout
    kill_at = None
    done = False
    try:
        while not done:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                process.send_signal(signal.SIGKILL)
                outcome.killed_at = now - start
                kill_at = None
            if now > deadline:
                process.kill()
                raise AssertionError(f"{args[2:4]} did not finish in {timeout:.0f}s:\n"
                                     + outcome.text[-3000:])
            wait = 0.5 if kill_at is None else max(0.0, min(0.5, kill_at - now))
            try:
                item = lines.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None:
                done = True
                continue
            outcome.lines.append(item)
            t, line = item
            if kill_after and kill_at is None and outcome.killed_at is None and \
                    re.search(kill_after[0], line):
                kill_at = start + t + kill_after[1]
            if pause_at and line.startswith("[fault] paused at") and outcome.paused is None:
                outcome.paused = line
                _wait_stopped(process)
                if on_pause:
                    on_pause(line)
                process.send_signal(signal.SIGKILL)
                outcome.killed_at = time.monotonic() - start
        outcome.returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    return outcome


def _wait_stopped(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Waits until the child has stopped itself (state T in /proc/<pid>/stat)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{process.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("T", "t"):
            return
        time.sleep(0.01)
    raise AssertionError("the process printed its pause line but did not stop")
