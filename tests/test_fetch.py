"""The download code against a real HTTP server on 127.0.0.1."""

import hashlib

import pytest

from pipeline.data.fetch import copy_verified, download
from pipeline.errors import ChecksumError, DownloadError

BODY = bytes(range(256)) * 2000  # 512 kB: several chunks
SHA = hashlib.sha256(BODY).hexdigest()


def _quiet(msg):
    _quiet.lines.append(msg)


def _download(url, dest, expected=(SHA,), **kw):
    _quiet.lines = []
    return download(url, dest, expected, timeout=5, backoff=0.01, log=_quiet, **kw)


def test_good_download_is_verified_and_shows_progress(http_server, tmp_path):
    dest = tmp_path / "file.bin"
    assert _download(http_server.serve("file.bin", BODY), dest) == SHA
    assert dest.read_bytes() == BODY
    assert any("0.5/0.5 MB (100%) done" in line for line in _quiet.lines)
    assert list(tmp_path.iterdir()) == [dest]


def test_checksum_mismatch_names_file_and_both_hashes_and_leaves_nothing(http_server, tmp_path):
    url = http_server.serve("file.bin", BODY)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        _download(url, tmp_path / "file.bin", expected=(wrong,))
    msg = str(info.value)
    assert "file.bin" in msg and wrong in msg and SHA in msg
    assert list(tmp_path.iterdir()) == []
    assert http_server.hits["file.bin"] == 1  # a wrong file is not fetched again


def test_connection_dropped_mid_file_is_retried_then_reported(http_server, tmp_path):
    url = http_server.serve("file.bin", BODY, "drop")
    with pytest.raises(DownloadError) as info:
        _download(url, tmp_path / "file.bin", retries=2)
    assert "after 3 attempts" in str(info.value)
    assert http_server.hits["file.bin"] == 3
    assert any("retry 1/2" in line for line in _quiet.lines)
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_transient_server_errors_are_retried_with_backoff(http_server, tmp_path):
    url = http_server.serve("file.bin", BODY, "fail2")
    dest = tmp_path / "file.bin"
    assert _download(url, dest, retries=3) == SHA
    assert http_server.hits["file.bin"] == 3
    assert dest.read_bytes() == BODY


def test_not_found_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        _download(f"{http_server.url}/missing.bin", tmp_path / "missing.bin", retries=3)
    assert http_server.hits["missing.bin"] == 1


def test_unreachable_host_fails_after_retries(tmp_path):
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(DownloadError, match="failed after 2 attempts"):
        _download("http://127.0.0.1:9/file.bin", tmp_path / "file.bin", retries=1)


def test_local_copy_is_verified_before_use(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(BODY)
    dest = tmp_path / "out" / "dest.bin"
    dest.parent.mkdir()
    assert copy_verified(src, dest, (SHA,)) == SHA
    with pytest.raises(ChecksumError, match="src.bin"):
        copy_verified(src, tmp_path / "out" / "other.bin", ("f" * 64,))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]
