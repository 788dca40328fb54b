from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import JobError
from fedsec.jobs import archive, pack, unpack

FILES = {
    "meta.yml": b"name: demo\n",
    "app/config.yml": b"workflow: {}\n",
    "app/custom/client.py": b"print('train')\n",
    "app/custom/pkg/__init__.py": b"",
    "app/custom/pkg/data.bin": bytes(range(256)) * 100,
}


@pytest.fixture
def job(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "app/custom/__pycache__").mkdir()
    (root / "app/custom/__pycache__/client.cpython-311.pyc").write_bytes(b"\0")
    (root / "app/custom/stale.pyc").write_bytes(b"\0")
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


def test_roundtrip_is_byte_identical(job: Path, tmp_path: Path) -> None:
    data = pack(job)
    unpack(data, tmp_path / "out")
    assert files_under(tmp_path / "out") == FILES  # no __pycache__, no .pyc
    assert pack(tmp_path / "out") == data
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_pack_is_deterministic(job: Path, tmp_path: Path) -> None:
    first = pack(job)
    assert pack(job) == first
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(job, copy)
    os.utime(copy / "meta.yml", (1_700_000_000, 1_700_000_000))
    (copy / "app/custom/client.py").chmod(0o755)
    assert pack(copy) == first


def test_pack_refuses_links_and_special_files(job: Path, tmp_path: Path) -> None:
    (job / "app/custom/link.py").symlink_to(job / "meta.yml")
    with pytest.raises(JobError, match="app/custom/link.py is a symlink"):
        pack(job)
    (job / "app/custom/link.py").unlink()
    (job / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(JobError, match="linked_dir is a symlink"):
        pack(job)
    (job / "linked_dir").unlink()
    os.mkfifo(job / "pipe")
    with pytest.raises(JobError, match="pipe is not a regular file"):
        pack(job)


def test_pack_limits(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(JobError, match="not a folder"):
        pack(job / "meta.yml")
    monkeypatch.setattr(limits, "MAX_JOB_FILES", 3)
    with pytest.raises(JobError, match="more than 3 files"):
        pack(job)
    monkeypatch.setattr(limits, "MAX_JOB_FILES", 100)
    monkeypatch.setattr(limits, "MAX_JOB_UNPACKED_BYTES", 1000)
    with pytest.raises(JobError, match="larger than 1000 bytes in all"):
        pack(job)


def test_pack_refuses_unsafe_names(job: Path) -> None:
    (job / "back\\slash.py").write_text("")
    with pytest.raises(JobError, match="backslashes"):
        pack(job)


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("app/evil")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("app/fifo")
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


META = ("meta.yml", b"name: demo\n")


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([META, ("../evil.py", b"x")], "entry '../evil.py': empty, '.' and '..' path parts are not allowed"),
        ([META, ("app/../../evil.py", b"x")], "'..' path parts are not allowed"),
        ([META, ("/etc/cron.d/evil", b"x")], "entry '/etc/cron.d/evil': absolute paths are not allowed"),
        ([META, ("C:/evil", b"x")], "absolute paths are not allowed"),
        ([META, ("app\\evil.py", b"x")], "backslashes"),
        ([META, ("app//evil.py", b"x")], "empty, '.' and '..' path parts"),
        ([META, ("./evil.py", b"x")], "empty, '.' and '..' path parts"),
        ([META, (_symlink_entry(), b"/etc/passwd")], "entry 'app/evil' is a symlink"),
        ([META, (_fifo_entry(), b"")], "entry 'app/fifo' is not a regular file or folder"),
        ([META, ("app", b"x"), ("app/x.py", b"y")], "entry 'app' is both a file and a folder"),
        ([META, ("app/x.py/", b""), ("app/x.py", b"y")], "entry 'app/x.py' is a duplicate"),
    ],
)
def test_unpack_refuses(tmp_path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], fragment: str) -> None:
    data = make_zip(entries)
    assert_refused(data, tmp_path, fragment)


def assert_refused(data: bytes, tmp_path: Path, fragment: str) -> None:
    """unpack fails with fragment in its message and leaves no dest and no temporary folder."""
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(JobError) as info:
        unpack(data, tmp_path / "dest")
    assert fragment in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before


def test_unpack_refuses_encrypted_entries(tmp_path: Path) -> None:
    data = patch_headers(make_zip([META, ("secret", b"x")]), b"secret", "flags", 0x1)
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("secret").flag_bits & 0x1
    assert_refused(data, tmp_path, "entry 'secret' is encrypted")


def test_unpack_refuses_duplicate_names(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip([META, ("app/x.py", b"one"), ("app/x.py", b"two")])
    assert_refused(data, tmp_path, "entry 'app/x.py' is a duplicate")


def test_unpack_refuses_too_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_JOB_FILES", 3)
    data = make_zip([META, *((f"f{i}", b"") for i in range(3))])
    assert_refused(data, tmp_path, "declares 4 entries, more than the limit of 3")


def test_unpack_refuses_oversized_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_zip([META])
    monkeypatch.setattr(limits, "MAX_JOB_ARCHIVE_BYTES", len(data) - 1)
    assert_refused(data, tmp_path, f"{len(data)} bytes is more than the limit")


def test_unpack_refuses_a_zip_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_JOB_UNPACKED_BYTES", 1 << 16)
    data = make_zip([META, ("bomb", bytes(1 << 20))])
    assert len(data) < 4096
    assert_refused(data, tmp_path, "declares more than 65536 bytes unpacked")


# (format, offset in the local file header, offset in the central directory header)
_HEADER_FIELDS = {"flags": ("<H", 6, 8), "file_size": ("<I", 22, 24)}


def patch_headers(data: bytes, name: bytes, field: str, value: int) -> bytes:
    """Rewrite a field of entry name in both its local and its central directory header."""
    fmt, local_at, central_at = _HEADER_FIELDS[field]
    out = bytearray(data)
    for signature, field_at, name_at in ((b"PK\x03\x04", local_at, 30), (b"PK\x01\x02", central_at, 46)):
        start = 0
        while (at := out.find(signature, start)) >= 0:
            if out[at + name_at : at + name_at + len(name)] == name:
                struct.pack_into(fmt, out, at + field_at, value)
            start = at + 4
    return bytes(out)


def test_unpack_does_not_trust_declared_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_JOB_UNPACKED_BYTES", 1 << 16)
    data = patch_headers(make_zip([META, ("bomb", bytes(1 << 20))]), b"bomb", "file_size", 100)
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("bomb").file_size == 100
    assert_refused(data, tmp_path, "entry 'bomb'")


def test_unpack_refuses_compression_without_an_output_bound(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("meta.yml", bytes(1 << 20))
    assert_refused(
        buffer.getvalue(), tmp_path, f"entry 'meta.yml': compression method {zipfile.ZIP_BZIP2} is not allowed"
    )


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    assert_refused(b"not a zip at all", tmp_path, "not a valid zip archive")


def test_unpack_refuses_an_existing_dest(job: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(JobError, match="already exists"):
        unpack(pack(job), dest)
    assert files_under(dest) == {"keep": b"mine"}
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(JobError, match="already exists"):
        unpack(pack(job), tmp_path / "dangling")


def test_unpack_accepts_folder_entries(tmp_path: Path) -> None:
    unpack(make_zip([("app/", b""), ("app/custom/", b""), META, ("app/custom/x.py", b"1")]), tmp_path / "out")
    assert files_under(tmp_path / "out") == {"meta.yml": META[1], "app/custom/x.py": b"1"}


def test_copy_counts_the_bytes_that_come_out() -> None:
    # zipfile already stops at an entry's declared size; this is the second line of defence.
    out = io.BytesIO()
    with pytest.raises(JobError, match="entry 'big': unpacks to more than"):
        archive._copy_bounded(io.BytesIO(bytes(100)), out, 50, "big")
    assert len(out.getvalue()) <= 50
    assert archive._copy_bounded(io.BytesIO(bytes(50)), io.BytesIO(), 50, "fits") == 0


def _with_end_record(data: bytes, *, entries: int, cd_size: int, zip64: bool) -> bytes:
    """data (a zip) with its end record rewritten to declare entries and cd_size (in a zip64 record if asked)."""
    at = data.rfind(b"PK\x05\x06")
    body, (_, disk, cd_disk, _, _, _, cd_offset, _) = data[:at], struct.unpack("<4s4H2LH", data[at : at + 22])
    if not zip64:
        return body + struct.pack("<4s4H2LH", b"PK\x05\x06", disk, cd_disk, entries, entries, cd_size, cd_offset, 0)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return body + record + locator + eocd


@pytest.mark.parametrize(
    ("zip64", "entries", "cd_size", "fragment"),
    [
        (False, 60_000, 100, "declares 60000 entries"),
        (True, 60_000, 100, "declares 60000 entries"),
        (True, 2_000_000, 100, "declares 2000000 entries"),
        (False, 1, limits.MAX_ZIP_DIRECTORY_BYTES + 1, "central directory of"),
        (True, 1, limits.MAX_ZIP_DIRECTORY_BYTES + 1, "central directory of"),
    ],
)
def test_unpack_checks_the_end_record_before_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zip64: bool, entries: int, cd_size: int, fragment: str
) -> None:
    data = _with_end_record(make_zip([("a.txt", b"x")]), entries=entries, cd_size=cd_size, zip64=zip64)

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile parsed the central directory")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", no_parse)
    with pytest.raises(JobError, match=fragment):
        unpack(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_a_zip_without_an_end_record(tmp_path: Path) -> None:
    data = make_zip([("a.txt", b"x")])
    with pytest.raises(JobError, match="no end-of-central-directory record"):
        unpack(data[: data.rfind(b"PK\x05\x06")], tmp_path / "out")


def test_unpack_reads_a_file_and_pack_file_writes_one(job: Path, tmp_path: Path) -> None:
    path = archive.pack_file(job, tmp_path / "job.zip")
    assert path.read_bytes() == pack(job)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    unpack(path, tmp_path / "out")
    assert files_under(tmp_path / "out") == FILES
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
