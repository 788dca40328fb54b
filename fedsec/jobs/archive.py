"""Job archives: a job folder as a deterministic zip, and its safe extraction.

pack() zips the regular files of a folder in sorted order with fixed
timestamps and modes, so the same folder always gives the same bytes (and the
same signature). unpack() treats an archive as hostile: it bounds the archive
size, then reads the end-of-central-directory records (zip64 ones too) itself
and bounds the declared entry count and central-directory size before zipfile
parses a byte of the directory; it bounds the file count and the bytes actually
decompressed (never trusting the sizes the archive declares), refuses absolute paths, '..', backslashes,
symlinks, special files and duplicate names, and extracts into a temporary
folder beside dest that is renamed into place only when everything passed.
Neither function looks inside the files or asks for meta.yml (job results
travel as archives too); callers validate a job with load_job_folder.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from fedsec import _fs, limits
from fedsec.errors import JobError

_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_READ_CHUNK = 1 << 20
_MAX_ENTRY_NAME = 1024  # characters in an entry's path
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc",)
# Only these: zipfile decompresses bzip2 and lzma without an output bound per read.
_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
# What zipfile and zlib raise on a malformed archive.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, ValueError)
_STORED_SUFFIXES = (".fsa",)  # array containers: written uncompressed
# End records (APPNOTE 4.3.14-4.3.16): the classic one, the zip64 locator before it and the zip64 one before that.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF


def pack(folder: Path) -> bytes:
    """Zip the regular files under folder (skipping __pycache__ and *.pyc), deterministically.

    Raises JobError for a symlink or special file, an unsafe name, or more files
    or bytes than the job limits allow.
    """
    buffer = io.BytesIO()
    pack_to(folder, buffer)
    return buffer.getvalue()


def pack_file(folder: Path, dest: Path) -> Path:
    """pack() into the file dest (mode 0600, written atomically), never holding the archive in memory.

    Raises JobError as pack() does, or when dest cannot be written.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            pack_to(folder, out)
        os.replace(tmp, dest)
    except OSError as exc:
        raise JobError(f"job archive {dest.name}: cannot write: {exc.strerror or exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def pack_to(folder: Path, out: IO[bytes]) -> None:
    """pack() into the seekable binary file out; raises JobError as pack() does."""
    if folder.is_symlink() or not folder.is_dir():
        raise JobError(f"job folder {folder}: not a folder")
    files = _collect(folder)
    start = out.tell()
    total = 0
    with zipfile.ZipFile(out, "w") as zf:
        for name, path in files:
            data = _read_file(path, limits.MAX_JOB_UNPACKED_BYTES - total, f"job folder {folder}: {name}")
            total += len(data)
            info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
            info.create_system = 3  # unix, whatever the platform, so the bytes do not depend on it
            info.external_attr = (stat.S_IFREG | _FILE_MODE) << 16
            # model weights barely compress and deflating them is slow: store them as they are
            stored = name.endswith(_STORED_SUFFIXES)
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=None if stored else 6)
            if out.tell() - start > limits.MAX_JOB_ARCHIVE_BYTES:
                break
    if out.tell() - start > limits.MAX_JOB_ARCHIVE_BYTES:
        raise JobError(f"job folder {folder}: archive is larger than {limits.MAX_JOB_ARCHIVE_BYTES} bytes")


def unpack(data: bytes | Path, dest: Path) -> None:
    """Extract a job archive (its bytes, or the file holding it) into dest, which must not exist; all or nothing.

    Raises JobError naming the entry and the problem; dest is then not created.
    """
    if os.path.lexists(dest):
        raise JobError(f"unpack job archive: {dest} already exists")
    if isinstance(data, Path):
        try:
            with data.open("rb") as f:
                _unpack_from(f, dest)
        except OSError as exc:
            raise JobError(f"unpack job archive: cannot read it: {exc.strerror or exc}") from exc
    else:
        _unpack_from(io.BytesIO(data), dest)


def check_directory(f: IO[bytes]) -> None:
    """Check the end records of the zip in the seekable file f before anything parses its central directory.

    Reads the end-of-central-directory record (and the zip64 one when there is one) itself and
    raises JobError when the archive is over limits.MAX_JOB_ARCHIVE_BYTES, has no end record,
    spans several disks, or declares more than limits.MAX_JOB_FILES entries or a central
    directory larger than limits.MAX_ZIP_DIRECTORY_BYTES. Reads at most 64 KiB plus the records.
    """
    size = f.seek(0, io.SEEK_END)
    if size > limits.MAX_JOB_ARCHIVE_BYTES:
        raise JobError(f"job archive: {size} bytes is more than the limit of {limits.MAX_JOB_ARCHIVE_BYTES}")
    tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
    f.seek(tail_start)
    tail = f.read(size - tail_start)
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise JobError("job archive: not a valid zip archive: no end-of-central-directory record")
    _, disk, cd_disk, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    eocd_pos = tail_start + at
    zip64 = _zip64_record(f, eocd_pos)
    if zip64 is not None:
        disk, cd_disk, entries, cd_size = zip64
    if disk != 0 or cd_disk != 0:
        raise JobError("job archive: not a valid zip archive: archives spanning several disks are not allowed")
    if entries > limits.MAX_JOB_FILES:
        raise JobError(f"job archive: declares {entries} entries, more than the limit of {limits.MAX_JOB_FILES}")
    if cd_size > limits.MAX_ZIP_DIRECTORY_BYTES:
        raise JobError(
            f"job archive: central directory of {cd_size} bytes is more than the limit of "
            f"{limits.MAX_ZIP_DIRECTORY_BYTES}"
        )


def _zip64_record(f: IO[bytes], eocd_pos: int) -> tuple[int, int, int, int] | None:
    """(disk, central directory disk, entries, central directory size) of the zip64 end record, if any.

    Looks where zipfile looks: the locator just before the end record, the zip64 record just before it.
    """
    locator_pos = eocd_pos - _ZIP64_LOCATOR.size
    if locator_pos < 0:
        return None
    f.seek(locator_pos)
    locator = f.read(_ZIP64_LOCATOR.size)
    if len(locator) != _ZIP64_LOCATOR.size or not locator.startswith(_ZIP64_LOCATOR_SIG):
        return None
    _, _, _, disks = _ZIP64_LOCATOR.unpack(locator)
    record_pos = locator_pos - _ZIP64_EOCD.size
    if disks > 1 or record_pos < 0:
        raise JobError("job archive: not a valid zip archive: a bad zip64 end record")
    f.seek(record_pos)
    record = f.read(_ZIP64_EOCD.size)
    if len(record) != _ZIP64_EOCD.size or not record.startswith(_ZIP64_EOCD_SIG):
        return None  # zipfile then reads the classic record's values, which were checked
    _, _, _, _, disk, cd_disk, on_disk, entries, cd_size, _ = _ZIP64_EOCD.unpack(record)
    return disk, cd_disk, max(on_disk, entries), cd_size


def _unpack_from(f: IO[bytes], dest: Path) -> None:
    check_directory(f)
    f.seek(0)
    with _fs.staged_dir(dest, "unpack job archive:", JobError) as staging:
        try:
            with zipfile.ZipFile(f) as zf:
                entries = _check_entries(zf.infolist())
                _extract(zf, entries, staging)
        except _ZIP_ERRORS as exc:
            raise JobError(f"job archive: not a valid zip archive: {exc}") from exc


def _collect(folder: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file to pack, sorted by name."""
    found: list[tuple[str, Path]] = []
    pending = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise JobError(f"job folder {folder}: {prefix or '.'}: cannot list: {exc.strerror or exc}") from exc
        for entry in entries:
            name = f"{prefix}{entry.name}"
            if entry.is_symlink():
                raise JobError(f"job folder {folder}: {name} is a symlink; a job holds regular files only")
            if entry.is_dir():
                if entry.name not in _SKIP_DIRS:
                    pending.append((Path(entry.path), f"{name}/"))
            elif entry.is_file():
                if not entry.name.endswith(_SKIP_SUFFIXES):
                    _check_name(name, f"job folder {folder}")
                    found.append((name, Path(entry.path)))
            else:
                raise JobError(f"job folder {folder}: {name} is not a regular file (a device, socket or pipe)")
            if len(found) > limits.MAX_JOB_FILES:
                raise JobError(f"job folder {folder}: more than {limits.MAX_JOB_FILES} files")
    return sorted(found)


def _read_file(path: Path, limit: int, where: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise JobError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise JobError(f"{where}: the job's files are larger than {limits.MAX_JOB_UNPACKED_BYTES} bytes in all")
    return data


def _check_name(name: str, where: str) -> None:
    """Refuse a name that could land outside the folder or mean different things on different systems."""
    if not name or len(name) > _MAX_ENTRY_NAME:
        raise JobError(f"{where}: entry {name[:40]!r}: names must have 1 to {_MAX_ENTRY_NAME} characters")
    if "\\" in name or "\0" in name:
        raise JobError(f"{where}: entry {name!r}: backslashes and NUL are not allowed in names")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JobError(f"{where}: entry {name!r}: the name is not valid UTF-8") from exc
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise JobError(f"{where}: entry {name!r}: absolute paths are not allowed")
    parts = name.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise JobError(f"{where}: entry {name!r}: empty, '.' and '..' path parts are not allowed")


def _check_entries(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """Check every entry before anything is written; return them."""
    if len(infos) > limits.MAX_JOB_FILES:
        raise JobError(f"job archive: {len(infos)} entries is more than the limit of {limits.MAX_JOB_FILES}")
    names: set[str] = set()
    files: set[str] = set()
    dirs: set[str] = set()  # named by an entry or implied by one's path
    declared = 0
    for info in infos:
        name = info.filename
        _check_name(name, "job archive")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise JobError(f"job archive: entry {name!r} is a symlink; a job holds regular files only")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise JobError(f"job archive: entry {name!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise JobError(f"job archive: entry {name!r} is encrypted")
        if info.compress_type not in _METHODS:
            raise JobError(f"job archive: entry {name!r}: compression method {info.compress_type} is not allowed")
        key = name.removesuffix("/")
        if key in names:
            raise JobError(f"job archive: entry {name!r} is a duplicate")
        names.add(key)
        if info.is_dir():
            dirs.add(key)
        else:
            files.add(key)
            declared += info.file_size
        dirs.update(str(p) for p in PurePosixPath(key).parents if str(p) != ".")
    clash = files & dirs
    if clash:
        raise JobError(f"job archive: entry {min(clash)!r} is both a file and a folder")
    if declared > limits.MAX_JOB_UNPACKED_BYTES:
        raise JobError(f"job archive: declares more than {limits.MAX_JOB_UNPACKED_BYTES} bytes unpacked")
    return infos


def _extract(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path) -> None:
    """Write the checked entries under root, counting the bytes actually decompressed."""
    budget = limits.MAX_JOB_UNPACKED_BYTES
    for info in infos:
        target = root / info.filename.removesuffix("/")
        try:
            if info.is_dir():
                target.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                budget = _copy_bounded(src, out, budget, info.filename)
        except _ZIP_ERRORS as exc:
            raise JobError(f"job archive: entry {info.filename!r}: corrupt: {exc}") from exc
        except OSError as exc:
            raise JobError(f"job archive: entry {info.filename!r}: cannot write: {exc.strerror or exc}") from exc


def _copy_bounded(src: IO[bytes], out: IO[bytes], budget: int, name: str) -> int:
    """Copy src to out in chunks; raise JobError once more than budget bytes came out. Returns what is left."""
    while chunk := src.read(min(_READ_CHUNK, budget + 1)):
        if len(chunk) > budget:
            raise JobError(
                f"job archive: entry {name!r}: unpacks to more than {limits.MAX_JOB_UNPACKED_BYTES} bytes in all"
            )
        budget -= len(chunk)
        out.write(chunk)
    return budget
