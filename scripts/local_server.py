"""A ``cnnkit serve`` or ``cnnkit studio`` process on 127.0.0.1, for the page tests and
scripts/studio_tour.py (which takes the README's screenshots)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

UP_TIMEOUT_S = 120  # a cold start imports torch and gradio


class Server:
    """A cnnkit server process, its page's URL and its output so far."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as in a terminal; the exit code (the process is killed if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cnnkit_server(command: str, args: list[str], log: Path) -> Server:
    """``cnnkit COMMAND *ARGS --port P`` in its own process, returned once its page answers

    Raises:
        RuntimeError: it did not come up (with the server's output).
    """
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cnnkit", command, *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            # a test runner started in the background (`cmd &`) ignores SIGINT and its
            # children inherit that; give the server a normal Ctrl-C, as in a terminal
            preexec_fn=_default_sigint,
        )
    server = Server(process, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not come up (exit code {process.poll()}):\n{server.output()}")
        time.sleep(0.5)


def kill_all(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
