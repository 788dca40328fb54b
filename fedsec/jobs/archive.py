"""Job archives: a job folder as a deterministic zip, and its safe extraction.

pack() zips the regular files of a folder in sorted order with fixed
timestamps and modes, so the same folder always gives the same bytes (and the
same signature). unpack() treats an archive as hostile: it bounds the archive
size, the file count and the bytes actually decompressed (never trusting the
sizes the archive declares), refuses absolute paths, '..', backslashes,
symlinks, special files and duplicate names, and extracts into a temporary
folder beside dest that is renamed into place only when everything passed.
Neither function looks inside the files or asks for meta.yml (job results
travel as archives too); callers validate a job with load_job_folder.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from fedsec import limits
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


def pack(folder: Path) -> bytes:
    """Zip the regular files under folder (skipping __pycache__ and *.pyc), deterministically.

    Raises JobError for a symlink or special file, an unsafe name, or more files
    or bytes than the job limits allow.
    """
    if folder.is_symlink() or not folder.is_dir():
        raise JobError(f"job folder {folder}: not a folder")
    files = _collect(folder)
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w") as zf:
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
    out = buffer.getvalue()
    if len(out) > limits.MAX_JOB_ARCHIVE_BYTES:
        raise JobError(f"job folder {folder}: archive is larger than {limits.MAX_JOB_ARCHIVE_BYTES} bytes")
    return out


def unpack(data: bytes, dest: Path) -> None:
    """Extract a job archive into dest, which must not exist; all or nothing.

    Raises JobError naming the entry and the problem; dest is then not created.
    """
    if os.path.lexists(dest):
        raise JobError(f"unpack job archive: {dest} already exists")
    if len(data) > limits.MAX_JOB_ARCHIVE_BYTES:
        raise JobError(f"job archive: {len(data)} bytes is more than the limit of {limits.MAX_JOB_ARCHIVE_BYTES}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
    except OSError as exc:
        raise JobError(f"unpack job archive: cannot create {dest}: {exc.strerror or exc}") from exc
    try:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                entries = _check_entries(zf.infolist())
                _extract(zf, entries, staging)
        except _ZIP_ERRORS as exc:
            raise JobError(f"job archive: not a valid zip archive: {exc}") from exc
        if os.path.lexists(dest):
            raise JobError(f"unpack job archive: {dest} already exists")
        staging.rename(dest)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise JobError(f"unpack job archive: cannot move it into {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
