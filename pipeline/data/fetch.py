"""Getting one verified file: copy it from a local mirror or download it over HTTP(S).

Downloads stream to a ``.part`` file while hashing, show progress, time out, retry
transient failures with exponential backoff, and are renamed into place only once the
SHA-256 matches. Nothing half-written is ever left under the destination name.
"""

import base64
import hashlib
import http.client
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipeline import console
from pipeline.errors import ChecksumError, DownloadError
from pipeline.fileio import CHUNK, sha256_of


def _check(name: str, actual: str, expected: tuple[str, ...], where: str) -> None:
    if actual not in expected:
        raise ChecksumError(
            f"{name} from {where}: SHA-256 mismatch: expected {' or '.join(expected)}, got {actual}"
        )


def copy_verified(src: Path, dest: Path, expected: tuple[str, ...]) -> str:
    """Copy a local file to ``dest`` if its SHA-256 is one of ``expected``; return the digest."""
    actual = sha256_of(src)
    _check(src.name, actual, expected, str(src))
    part = dest.with_name(dest.name + ".part")
    try:
        shutil.copyfile(src, part)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return actual


class _Transient(Exception):
    """A failure worth retrying: timeout, reset connection, short read, 5xx."""


def download(
    url: str,
    dest: Path,
    expected: tuple[str, ...],
    *,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    log=None,
) -> str:
    """Download ``url`` to ``dest``, verified against ``expected``; return the digest.

    Raises:
        ChecksumError: the file arrived whole but its SHA-256 is not pinned (not retried).
        DownloadError: it could not be fetched after ``retries`` retries.
    """
    log = log or console.log
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    try:
        while True:
            try:
                actual = _stream(url, part, timeout, log)
                break
            except _Transient as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        f"{dest.name}: download from {url} failed after {attempt} attempts: {exc}"
                    ) from None
                wait = backoff * 2 ** (attempt - 1)
                log(f"download: {dest.name}: {exc}; retry {attempt}/{retries} in {wait:.0f}s")
                time.sleep(wait)
        _check(dest.name, actual, expected, url)
        part.replace(dest)
        return actual
    finally:
        part.unlink(missing_ok=True)


def _request(url: str) -> urllib.request.Request:
    """``url`` as a request; ``user:password@`` in it is sent as HTTP Basic auth.

    urllib would take the user info for part of the host name.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    credentials = f"{urllib.parse.unquote(parts.username)}:"
    credentials += urllib.parse.unquote(parts.password or "")
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    request = urllib.request.Request(bare)
    token = base64.b64encode(credentials.encode()).decode()
    # Unredirected: a redirect to another host must not receive the password.
    request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _stream(url: str, part: Path, timeout: float, log) -> str:
    """One attempt: stream ``url`` into ``part``; return its SHA-256."""
    digest = hashlib.sha256()
    received = 0
    try:
        request = _request(url)
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length") or "0"
            total = int(length) if length.isdigit() else 0
            progress = _Progress(part.name.removesuffix(".part"), total, log)
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.update(received)
            progress.done(received)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code}") from None
        name = part.name.removesuffix(".part")
        raise DownloadError(f"{name}: {url} answered HTTP {exc.code}") from None
    except http.client.IncompleteRead as exc:
        raise _Transient(f"connection dropped after {received + len(exc.partial)} bytes") from None
    except ValueError as exc:  # e.g. a URL without a scheme
        raise DownloadError(f"{url}: not a valid URL ({exc})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"{type(reason).__name__}: {reason}") from None
    if total and received != total:
        raise _Transient(f"truncated: got {received} of {total} bytes")
    return digest.hexdigest()


class _Progress:
    """Prints '<name>: 12.3/26.4 MB (46%)' at most every 2 s, and once at the end."""

    def __init__(self, name: str, total: int, log):
        self.name, self.total, self.log = name, total, log
        self.last = time.monotonic()

    def update(self, received: int) -> None:
        now = time.monotonic()
        if now - self.last >= 2.0:
            self.last = now
            self.log(f"download: {self.name}: {self._fmt(received)}")

    def done(self, received: int) -> None:
        self.log(f"download: {self.name}: {self._fmt(received)} done")

    def _fmt(self, received: int) -> str:
        mb = received / 1e6
        if self.total:
            return f"{mb:.1f}/{self.total / 1e6:.1f} MB ({100 * received // self.total}%)"
        return f"{mb:.1f} MB"
