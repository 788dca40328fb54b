"""Filesystem helpers: atomic writes, secret files (0600), staged folders, safe names.

Every file fedsec writes goes through write_atomic or write_secret, so a crash
never leaves a half-written file behind and keys are never readable by others.
Nothing here logs file contents.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fedsec import limits
from fedsec.errors import ConfigError, FedsecError

# Site, server and project names: a letter or digit, then letters, digits, '.', '_', '-'.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Admin names are e-mail addresses made of the same safe characters.
_EMAIL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*@[A-Za-z0-9][A-Za-z0-9.-]*")

NAME_CHARS_HELP = "a letter or digit, then letters, digits, '.', '_' or '-'"


def _check_shape(kind: str, name: str, pattern: re.Pattern[str], help_text: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > limits.MAX_NAME_LENGTH:
        raise ConfigError(f"{kind} name {name[:20]!r}... is longer than {limits.MAX_NAME_LENGTH} characters")
    if ".." in name or not pattern.fullmatch(name):
        raise ConfigError(f"{kind} name {name!r} is not safe: use {help_text}, and no '..'")
    return name


def check_name(kind: str, name: str) -> str:
    """Return name if it is safe as a file name and a certificate CN; raise ConfigError otherwise."""
    return _check_shape(kind, name, _NAME_RE, NAME_CHARS_HELP)


def check_email(kind: str, name: str) -> str:
    """Return name if it is a safe e-mail address; raise ConfigError otherwise."""
    return _check_shape(kind, name, _EMAIL_RE, "an e-mail address of letters, digits, '.', '_', '+', '-'")


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o077  # not knowing it, take the strictest that still lets the owner in


@contextmanager
def atomic_file(path: Path, mode: int = 0o600, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write path's new content into: a temporary file in path's folder (mode less the
    process's umask) that replaces path only when the block ends without an error, so path holds either its
    old content or the whole new one; on an error it is removed. durable=False skips the fsync.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write data to path through a temporary file and a rename, with mode less the process's umask.

    The server and site parents run with umask 077 (fedsec._proc.private_files), so what they
    write is 0600 whatever mode a caller asks for. durable=False skips the fsync: for a cache
    whose content is checked whenever it is used.
    """
    with atomic_file(path, mode, durable=durable) as f:
        f.write(data)


def join_atomic(path: Path, parts: Sequence[bytes | Path], mode: int = 0o600) -> None:
    """Write the concatenation of parts (bytes, or the contents of files) to path, as write_atomic does (durable)."""
    with atomic_file(path, mode) as f:
        for part in parts:
            if isinstance(part, Path):
                with part.open("rb") as source:
                    shutil.copyfileobj(source, f, 1 << 20)
            else:
                f.write(part)


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key or other secret: mode 0600 from the first byte on."""
    write_atomic(path, data, mode=0o600)


def check_operator_file(path: Path, where: str, *, others_may_read: bool) -> bool:
    """Whether an operator-owned settings file exists; ConfigError("{where}: ...") unless it is safe to trust.

    Such a file (a site's local/site_settings.yml, a server's local/tracking.yml) is not covered by the
    kit's signature, so it is trusted only as far as its permissions go: a regular file (not a link),
    owned by this process's user, writable by nobody else, and readable by nobody else unless
    others_may_read (0644 then passes; 0600 always does).
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: not a regular file (a link or a folder is refused)")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{where}: owned by uid {info.st_uid}, not by the user that runs fedsec (uid {os.geteuid()})")
    mode = stat.S_IMODE(info.st_mode)
    allowed = (0o600, 0o400, 0o644, 0o444) if others_may_read else (0o600, 0o400)
    if mode not in allowed:
        fix = "chmod 600" if not others_may_read else "chmod 600 (or 644)"
        raise ConfigError(f"{where}: mode {mode:04o} lets others read or change it: {fix} {path.name}")
    return True


def read_bounded(path: Path, limit: int, where: str, error: type[FedsecError] = ConfigError) -> bytes:
    """Read a whole file of at most limit bytes; raise error("{where}: ...") otherwise."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise error(f"{where}: larger than the limit of {limit} bytes")
    return data


@contextmanager
def staged_dir(dest: Path, what: str = "folder", error: type[FedsecError] = ConfigError) -> Iterator[Path]:
    """A fresh, empty folder beside dest to fill in the with block; renamed to dest when the block succeeds.

    All or nothing: when the block raises, the staging folder is removed and dest is not made. Never
    replaces anything: raises error("{what} {dest} exists already") when dest exists, before the block
    and again at the rename; an OSError of the block or the rename becomes error too.
    """
    if os.path.lexists(dest):
        raise error(f"{what} {dest} exists already; not overwriting it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    except OSError as exc:
        raise error(f"{what} {dest}: cannot create it: {exc.strerror or exc}") from exc
    try:
        yield staging
        if os.path.lexists(dest):
            raise error(f"{what} {dest} exists already; not overwriting it")
        staging.rename(dest)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise error(f"{what} {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
