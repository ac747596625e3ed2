"""Waiting for things and stopping processes: one way to do each."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.3) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    An exception from ``check`` propagates (a check raises when waiting is pointless);
    after ``timeout`` seconds a TimeoutError says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers 200; fails at once if ``proc`` (the server) exits meanwhile."""

    def answered() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        return http_ok(url)

    wait_until(answered, timeout, f"{url} answering 200")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process's group (started with ``start_new_session=True``), SIGKILL it if
    it lingers past ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
