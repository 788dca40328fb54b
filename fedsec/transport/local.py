"""Local gRPC between a parent and its job processes: Unix sockets in a 0700 folder.

The socket file is mode 0600 in a 0700 folder, so only the same user can
connect; gRPC's local (UDS) credentials mark the link as local. A site gives
each job its own socket and token (TOKEN_METADATA on every call).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from fedsec import limits

TOKEN_METADATA = "fedsec-job-token"  # noqa: S105 - a name, not a secret; the gRPC metadata key a job's calls carry its credential in
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_OPTIONS = [
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
]


def socket_path(run_dir: Path, name: str) -> Path:
    """A socket path in run_dir (made 0700), or in a private temporary folder when that path is too long."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    path = run_dir / name
    if len(str(path)) >= _MAX_SOCKET_PATH:
        path = Path(tempfile.mkdtemp(prefix="fedsec-")) / name
    path.unlink(missing_ok=True)
    return path


def socket_dir(run_dir: Path, name: str) -> Path:
    """A 0700 folder for short-named sockets: run_dir/name, or a private temporary folder when that is too long."""
    path = run_dir / name
    if len(str(path)) >= _MAX_SOCKET_PATH - 16:
        return Path(tempfile.mkdtemp(prefix="fedsec-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    os.chmod(run_dir, 0o700)
    return path


def serve_unix(path: Path, register: Callable[[grpc.Server], None], workers: int = 16) -> grpc.Server:
    """Start a gRPC server on the Unix socket path and return it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=_OPTIONS)
    register(server)
    server.add_secure_port(f"unix:{path}", grpc.local_server_credentials(grpc.LocalConnectionType.UDS))
    server.start()
    os.chmod(path, 0o600)
    return server


def unix_channel(path: Path) -> grpc.Channel:
    """A channel to a local Unix-socket server."""
    return grpc.secure_channel(
        f"unix:{path}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS), options=_OPTIONS
    )


def nobody_listens(path: Path) -> bool:
    """Whether the process that served path is gone: the socket refuses, or its file is gone.

    A busy or slow listener is not gone; only a refused connection or a missing file says so.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False
