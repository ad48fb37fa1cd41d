"""The download stage's source order, verification, offline errors and safe extraction."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from pipeline.config import DataParams
from pipeline.data import catalog
from pipeline.data.acquire import acquire
from pipeline.data.archives import safe_extract
from pipeline.errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError
from pipeline.fileio import sha256_of
from tests.conftest import make_idx_dataset, run_cli


@pytest.fixture
def tiny_fashion(tmp_path, http_server, monkeypatch):
    """Fashion-MNIST's catalogue entry, pointed at tiny fixture files served on loopback."""
    files = make_idx_dataset(tmp_path / "fixture")
    remotes = []
    for f in sorted(files.iterdir()):
        url = http_server.serve(f.name, f.read_bytes())
        remotes.append(catalog.RemoteFile(f.name, url, (sha256_of(f),)))
    debian = tmp_path / "debian"
    ds = catalog.Dataset(
        "fashion_mnist", tuple(remotes), catalog.FASHION_CLASSES,
        local_mirrors=(debian,), keras_cache_subdir="fashion-mnist",
        install_hint="install the Debian package (apt-get install dataset-fashion-mnist)",
    )  # fmt: skip
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist", ds)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return files, debian


def _acquire(tmp_path, **params):
    dest = tmp_path / "out"
    dest.mkdir(parents=True)
    lines = []
    manifest = acquire(DataParams(**params), dest, lines.append, backoff=0.01)
    return dest, manifest, lines


def test_canonical_url_is_used_when_no_local_copy(tiny_fashion, tmp_path, http_server):
    files, _ = tiny_fashion
    dest, manifest, _ = _acquire(tmp_path)
    assert sorted(manifest["files"]) == sorted(p.name for p in files.iterdir())
    assert all(src.startswith(http_server.url) for src in manifest["sources"].values())
    for name, digest in manifest["files"].items():
        assert sha256_of(dest / name) == digest


def test_mirror_dir_comes_first_then_debian_then_network(tiny_fashion, tmp_path, http_server):
    files, debian = tiny_fashion
    debian.mkdir()
    for f in files.iterdir():
        (debian / f.name).write_bytes(f.read_bytes())
    _, manifest, _ = _acquire(tmp_path, mirror_dir=str(files))
    assert all(src.startswith(str(files)) for src in manifest["sources"].values())
    _, manifest, _ = _acquire(tmp_path / "2")
    assert all(src.startswith(str(debian)) for src in manifest["sources"].values())
    assert http_server.hits == {}


def test_keras_cache_is_used(tiny_fashion, tmp_path, http_server):
    files, _ = tiny_fashion
    cache = tmp_path / "keras" / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    for f in files.iterdir():
        (cache / f.name).write_bytes(f.read_bytes())
    _, manifest, _ = _acquire(tmp_path)
    assert all(src.startswith(str(cache)) for src in manifest["sources"].values())


def test_corrupt_mirror_file_is_skipped_for_the_next_source(tiny_fashion, tmp_path):
    files, _ = tiny_fashion
    bad = tmp_path / "badmirror"
    bad.mkdir()
    (bad / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    _, manifest, lines = _acquire(tmp_path, mirror_dir=str(bad))
    assert manifest["sources"]["train-labels-idx1-ubyte.gz"].startswith("http://127.0.0.1")
    assert any("skipping" in line and "SHA-256 mismatch" in line for line in lines)


def test_mirror_url_is_tried_before_the_canonical_url(tiny_fashion, tmp_path, http_server):
    files, _ = tiny_fashion
    for f in files.iterdir():
        http_server.serve(f"team/{f.name}", f.read_bytes())
    _, manifest, _ = _acquire(tmp_path, mirror_url=f"{http_server.url}/team")
    assert all("/team/" in src for src in manifest["sources"].values())


def test_offline_without_mirror_says_how_to_fix(monkeypatch, tmp_path):
    remote = catalog.RemoteFile("train-images-idx3-ubyte.gz", "http://127.0.0.1:9/x", ("0" * 64,))
    ds = catalog.Dataset(
        "fashion_mnist", (remote,), catalog.FASHION_CLASSES,
        local_mirrors=(tmp_path / "nowhere",), keras_cache_subdir="fashion-mnist",
        install_hint="install the Debian package (apt-get install dataset-fashion-mnist)",
    )  # fmt: skip
    monkeypatch.setitem(catalog.DATASETS, "fashion_mnist", ds)
    with pytest.raises(DownloadError) as info:
        _acquire(tmp_path, retries=0)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.mirror_dir" in msg
    assert "\n" not in msg


def test_checksum_error_when_every_source_has_a_bad_copy(tiny_fashion, tmp_path, http_server):
    files, _ = tiny_fashion
    http_server.serve("train-images-idx3-ubyte.gz", b"tampered")
    with pytest.raises(ChecksumError) as info:
        _acquire(tmp_path, retries=0)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert not (tmp_path / "out" / "train-images-idx3-ubyte.gz").exists()


def test_digits_come_from_scikit_learn_offline(tmp_path):
    dest, manifest, _ = _acquire(tmp_path, dataset="digits")
    assert manifest["files"] == {catalog.DIGITS_FILE: catalog.DIGITS_SHA256}
    assert (dest / catalog.DIGITS_FILE).is_file()


def test_image_folder_is_copied_with_checksums(image_folder, tmp_path):
    dest, manifest, _ = _acquire(tmp_path, dataset="image_folder", image_folder=str(image_folder))
    assert "cat/broken.png" in manifest["files"]  # corrupt files travel; preprocess lists them
    assert "dog/notes.txt" not in manifest["files"]
    assert (dest / "dog" / "truncated.jpg").is_file()


def test_image_folder_with_an_empty_class_is_an_error(image_folder, tmp_path):
    (image_folder / "fish").mkdir()
    with pytest.raises(DataError, match="no images.*fish"):
        _acquire(tmp_path, dataset="image_folder", image_folder=str(image_folder))


def _tarball(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                data = b"payload"
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "member, kind, why",
    [
        ("../evil.txt", "file", "outside the target folder"),
        ("cifar-10-batches-py/../../evil.txt", "file", "outside the target folder"),
        ("/tmp/evil.txt", "file", "absolute path"),
        ("cifar-10-batches-py/link", "symlink", "is a link"),
    ],
)
def test_extraction_refuses_unsafe_members_and_writes_nothing(tmp_path, member, kind, why):
    archive = _tarball(
        tmp_path / "a.tar.gz", [("cifar-10-batches-py/data_batch_1", "file"), (member, kind)]
    )
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_writes_regular_members(tmp_path):
    archive = _tarball(tmp_path / "a.tar.gz", [("d/x.bin", "file"), ("d/y.bin", "file")])
    files = safe_extract(archive, tmp_path / "t")
    assert sorted(p.name for p in files) == ["x.bin", "y.bin"]
    assert (tmp_path / "t" / "d" / "x.bin").read_bytes() == b"payload"


@pytest.mark.integration
def test_download_stage_writes_checksums_and_leaves_no_temp_dirs(project):
    project.params(data={"dataset": "digits"})
    result = run_cli("download", cwd=project.path)
    assert result.returncode == 0, result.stderr
    raw = project.path / "data" / "raw"
    assert [p.name for p in raw.iterdir()] == ["digits"]
    manifest = json.loads((raw / "digits" / "checksums.json").read_text())
    assert manifest["dataset"] == "digits"
    assert "verified" in result.stderr


@pytest.mark.integration
def test_failed_download_keeps_the_previous_raw_data(project, monkeypatch):
    project.params(data={"dataset": "digits"})
    assert run_cli("download", cwd=project.path).returncode == 0
    before = (project.path / "data/raw/digits/checksums.json").read_text()
    project.params(data={"dataset": "image_folder", "image_folder": "/does/not/exist"})
    result = run_cli("download", cwd=project.path)
    assert result.returncode == 1
    assert "data.image_folder: /does/not/exist is not a folder" in result.stderr
    assert (project.path / "data/raw/digits/checksums.json").read_text() == before
    assert sorted(p.name for p in (project.path / "data/raw").iterdir()) == ["digits"]


def test_cifar10_is_fetched_verified_and_extracted(tmp_path, http_server, monkeypatch):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        (src / name).write_bytes(pickle.dumps(batch))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    url = http_server.serve(archive.name, archive.read_bytes())
    remote = catalog.RemoteFile(archive.name, url, (sha256_of(archive),))
    ds = catalog.Dataset("cifar10", (remote,), catalog.CIFAR10_CLASSES)
    monkeypatch.setitem(catalog.DATASETS, "cifar10", ds)
    dest, manifest, _ = _acquire(tmp_path, dataset="cifar10")
    assert manifest["archive"] == {archive.name: sha256_of(archive)}
    assert "cifar-10-batches-py/test_batch" in manifest["files"]
    assert archive.name not in manifest["files"] and not (dest / archive.name).exists()
    for rel, digest in manifest["files"].items():
        assert sha256_of(dest / rel) == digest


def test_missing_mirror_dir_is_named(tmp_path):
    with pytest.raises(DataError, match="data.mirror_dir: /no/such/dir is not a folder"):
        _acquire(tmp_path, dataset="digits", mirror_dir="/no/such/dir")


def test_stale_temp_dirs_of_a_killed_run_are_removed(project):
    stale = project.path / "data" / "raw" / ".digits.x1y2.tmp"
    stale.mkdir(parents=True)
    (stale / "half.part").write_bytes(b"half")
    project.params(data={"dataset": "digits"})
    assert run_cli("download", cwd=project.path).returncode == 0
    assert sorted(p.name for p in (project.path / "data" / "raw").iterdir()) == ["digits"]
