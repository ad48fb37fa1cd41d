"""Loopback helpers for the servers the project starts: a free port, a readiness wait."""

import socket
import subprocess
import time
import urllib.request

# Loopback servers never go through a proxy (a user's HTTP_PROXY would swallow them).
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_ready(
    proc: subprocess.Popen, url: str, timeout: float | None = None, path: str = "/health"
) -> bool:
    """Wait until the server answers ``url + path``; False if it exited or ``timeout`` passed."""
    end = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None and (end is None or time.monotonic() < end):
        try:
            with NO_PROXY.open(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False
