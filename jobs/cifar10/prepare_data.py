"""Fetch CIFAR-10 (binary release), check its MD5 and unpack it safely: the cifar10 jobs' data.

    python jobs/cifar10/prepare_data.py                       # download to ~/.cache/fedsec/cifar10
    python jobs/cifar10/prepare_data.py --from cifar-10-binary.tar.gz --dest DIR

The archive goes to a temporary file inside --dest, is checked against --md5, and
is unpacked member by member into a staging folder (only the release's own file
names; no links, absolute paths or '..'), whose files are then read with data.py
before the folder is renamed to DEST/cifar-10-batches-bin. Any failure leaves
nothing behind: no temporary file, no partial folder. Exits 0 on success, 1 on a
failure, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # data.py, wherever this script is run from

from data import BATCHES_DIR, TEST_FILE, TRAIN_FILES, read_batch  # noqa: E402

DEFAULT_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DEFAULT_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
DEFAULT_DEST = Path("~/.cache/fedsec/cifar10").expanduser()
MAX_ARCHIVE_BYTES = 256 << 20  # the real archive is 170 MB
MAX_MEMBER_BYTES = 64 << 20  # each .bin file is 30.7 MB
CHUNK = 1 << 20
DATA_FILES = (*TRAIN_FILES, TEST_FILE)
ALLOWED_MEMBERS = {BATCHES_DIR} | {f"{BATCHES_DIR}/{n}" for n in (*DATA_FILES, "batches.meta.txt", "readme.html")}


class PrepareError(Exception):
    """The archive could not be fetched, did not match its checksum, or is not the expected one."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="where to download the binary archive")
    parser.add_argument("--md5", default=DEFAULT_MD5, help="the archive's expected MD5 (hex)")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="the folder to unpack into")
    parser.add_argument("--from", dest="archive", type=Path, help="use this archive on disk instead of downloading")
    return parser.parse_args(argv)


def download(url: str, dest_dir: Path) -> Path:
    """Stream url into a new temporary file in dest_dir; returns its path. Raises PrepareError."""
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".cifar-10-download.", suffix=".tar.gz")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            size = 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > MAX_ARCHIVE_BYTES:
                    raise PrepareError(f"{url}: larger than {MAX_ARCHIVE_BYTES} bytes; not the CIFAR-10 archive")
                out.write(chunk)
    except (OSError, urllib.error.URLError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PrepareError(f"cannot download {url}: {exc}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def check_md5(path: Path, expected: str, what: str) -> None:
    """Raises PrepareError unless the file's MD5 is expected."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise PrepareError(f"{what}: MD5 {digest.hexdigest()} does not match the expected {expected}; refused")


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's data filter (no links, devices, absolute paths or '..') plus the release's own names only."""
    name = member.name.rstrip("/")
    if name not in ALLOWED_MEMBERS or not (member.isfile() or member.isdir()):
        raise PrepareError(f"archive member {member.name!r} is not part of the CIFAR-10 binary release; refused")
    if member.isfile() and member.size > MAX_MEMBER_BYTES:
        raise PrepareError(f"archive member {member.name!r} is larger than {MAX_MEMBER_BYTES} bytes; refused")
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        raise PrepareError(f"archive member {member.name!r}: {exc}; refused") from exc


def unpack(archive: Path, staging: Path) -> Path:
    """Unpack archive into staging and check every data file; returns staging/cifar-10-batches-bin."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter=_member_filter)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PrepareError(f"{archive}: not a readable tar.gz archive: {exc}") from exc
    folder = staging / BATCHES_DIR
    for name in DATA_FILES:
        try:
            read_batch(folder / name)
        except ValueError as exc:
            raise PrepareError(str(exc)) from exc
    return folder


def prepare(dest: Path, *, url: str, md5: str, archive: Path | None = None) -> Path:
    """Put a checked copy of CIFAR-10 at dest/cifar-10-batches-bin (kept if already there); returns it.

    Raises PrepareError; then nothing new is left in dest.
    """
    target = dest / BATCHES_DIR
    if target.is_dir():
        return target
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    downloaded: Path | None = None
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".cifar-10-staging."))
    try:
        if archive is None:
            downloaded = source = download(url, dest)
            check_md5(source, md5, url)
        else:
            source = archive
            check_md5(source, md5, str(source))
        folder = unpack(source, staging)
        os.rename(folder, target)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.archive is not None and not args.archive.is_file():
        print(f"prepare_data.py: error: --from {args.archive}: no such file", file=sys.stderr)
        return 2
    try:
        target = prepare(args.dest.expanduser(), url=args.url, md5=args.md5, archive=args.archive)
    except PrepareError as exc:
        print(f"prepare_data.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"CIFAR-10 is ready in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
