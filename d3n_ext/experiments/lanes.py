"""Commands side by side, each writing its own log: the pipeline's `--jobs 2`.

The pipeline's two lanes — baseline then self-distilled student; stage 1, teacher then D3N student — share
nothing until evaluation. One CPU training leaves a third of two cores idle (data loading, Python, small
ops), so two lanes in two processes finish sooner. Each process keeps the thread count it would have
alone, so its weights are the sequential run's. OpenMP threads that spin-wait make two busy processes slow
each other many times over, so the commands start with OMP_WAIT_POLICY=PASSIVE unless the caller chose.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, TextIO


class LaneError(RuntimeError):
    """A lane's process failed: its name, exit status and log."""


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(empty log)"


class _Relay:
    """New complete lines of a growing log, handed to `show` when `keep` says so."""

    def __init__(self, path: Path, keep: Callable[[str], bool], show: Callable[[str], None]):
        self.path, self.keep, self.show = path, keep, show
        self.offset, self.partial = path.stat().st_size, ""

    def pump(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk.decode(errors="replace")).replace("\r", "\n").split("\n")
        for line in lines:
            if self.keep(line):
                self.show(line)


def run_side_by_side(commands: dict[str, list[str]], logs: Path, keep: Callable[[str], bool],
                     show: Callable[[str], None], poll: float = 2.0) -> None:
    """Run every command at once, appending its output to <logs>/<name>.log and showing the lines `keep` picks.

    Returns when all have succeeded. When one fails the others are stopped and LaneError names the failed
    one, its exit status, its log and the log's last line. Ctrl-C stops them all.
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    procs: dict[str, subprocess.Popen] = {}
    files: dict[str, TextIO] = {}
    relays: list[_Relay] = []
    try:
        for name, command in commands.items():
            path = logs / f"{name}.log"
            files[name] = open(path, "a")  # appended: an earlier attempt's log stays readable
            files[name].write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            files[name].flush()
            relays.append(_Relay(path, keep, show))
            procs[name] = subprocess.Popen(command, stdout=files[name], stderr=subprocess.STDOUT, env=env)
        while procs:
            time.sleep(poll)
            for relay in relays:
                relay.pump()
            for name, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del procs[name]
                if rc != 0:
                    files[name].flush()
                    path = logs / f"{name}.log"
                    raise LaneError(f"the {name} lane failed (exit {rc}); its log {path} ends: {_last_line(path)}")
        for relay in relays:
            relay.pump()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in files.values():
            f.close()
