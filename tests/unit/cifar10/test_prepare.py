"""jobs/cifar10/prepare_data.py: the real download path over HTTP on 127.0.0.1, checksums, safe unpacking."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.unit.cifar10 import job_module, write_archive

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the ml extra")

PREPARE_SH = Path(__file__).resolve().parents[3] / "jobs" / "cifar10" / "prepare_data.sh"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, md5) of a small archive in the official format, served over HTTP on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    archive = write_archive(root / "cifar-10-binary.tar.gz", n_train=250, n_test=50)
    handler = partial(_QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            yield f"http://127.0.0.1:{port}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()
        finally:
            server.shutdown()
            thread.join(10)


def test_download_checks_unpacks_and_data_reads_it(served: tuple[str, str], tmp_path: Path) -> None:
    url, md5 = served
    dest = tmp_path / "cache" / "cifar10"
    assert job_module("prepare_data").main(["--url", url, "--md5", md5, "--dest", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-bin"]  # no temp file, no staging
    data = job_module("data")
    images, labels = data.read_train(dest)
    assert images.shape == (250, 3, 32, 32) and len(labels) == 250
    assert data.read_test(dest)[0].shape == (50, 3, 32, 32)
    site = data.load_site(dest, 0, 4, 1.0, 0, tmp_path / "splits")
    assert len(site.train_labels) >= 10


def test_wrong_checksum_is_refused_and_leaves_nothing(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = served
    dest = tmp_path / "cifar10"
    assert job_module("prepare_data").main(["--url", url, "--md5", "0" * 32, "--dest", str(dest)]) == 1
    assert "does not match the expected" in capsys.readouterr().err
    assert not dest.exists()
    dest.mkdir()  # an existing destination is kept, and stays empty
    assert job_module("prepare_data").main(["--url", url, "--md5", "0" * 32, "--dest", str(dest)]) == 1
    assert list(dest.iterdir()) == []


def test_unreachable_url_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/cifar-10-binary.tar.gz"  # the discard port: nothing listens
    assert job_module("prepare_data").main(["--url", url, "--dest", str(tmp_path / "d")]) == 1
    assert f"cannot download {url}" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_from_an_archive_on_disk_via_the_shell_script(tmp_path: Path) -> None:
    import subprocess

    archive = write_archive(tmp_path / "cifar-10-binary.tar.gz", n_train=100, n_test=20)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cifar10"
    argv = [str(PREPARE_SH), "--from", str(archive), "--md5", md5, "--dest", str(dest)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"CIFAR-10 is ready in {dest / 'cifar-10-batches-bin'}" in done.stdout
    assert len(job_module("data").read_test(dest)[1]) == 20


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"../evil.bin": b"x"}, "not part of the CIFAR-10 binary release"),
        ({"/etc/evil": b"x"}, "not part of the CIFAR-10 binary release"),
        ({"cifar-10-batches-bin/other.bin": b"x"}, "not part of the CIFAR-10 binary release"),
    ],
)
def test_unexpected_members_are_refused(tmp_path: Path, extra: dict[str, bytes], problem: str) -> None:
    prepare = job_module("prepare_data")
    archive = write_archive(tmp_path / "a.tar.gz", n_train=100, n_test=20, extra=extra)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cifar10"
    with pytest.raises(prepare.PrepareError, match=problem):
        prepare.prepare(dest, url="", md5=md5, archive=archive)
    assert not dest.exists()


def test_links_are_refused(tmp_path: Path) -> None:
    import tarfile

    prepare = job_module("prepare_data")
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(prepare.PrepareError, match="refused"):
        prepare.prepare(tmp_path / "cifar10", url="", md5=md5, archive=archive)
    assert not (tmp_path / "cifar10").exists()


def test_a_truncated_data_file_is_refused(tmp_path: Path) -> None:
    prepare = job_module("prepare_data")
    archive = write_archive(
        tmp_path / "a.tar.gz", n_train=100, n_test=20, extra={"cifar-10-batches-bin/test_batch.bin": b"\x01" * 3072}
    )
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(prepare.PrepareError, match="not a whole number"):
        prepare.prepare(tmp_path / "cifar10", url="", md5=md5, archive=archive)
    assert not (tmp_path / "cifar10").exists()
