"""A standby replica's stand-in: a server replica's kit on its ports, answering every call as a standby does.

The lease that makes a replica active or standby is not built yet; the answer a
standby gives is (fedsec.transport.failover.abort_standby). StandbyReplica serves
that answer over mutual TLS with the replica's own kit, on both of the kit's
ports, so sites and admins meet it exactly as they will meet a standby replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fedsec.kit import ServerConfig, load_kit
from fedsec.transport.failover import abort_standby
from fedsec.transport.tls import GRPC_OPTIONS, server_credentials


class _AnyMethod(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every method, whatever its shape: read nothing, answer standby."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.calls: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.calls.append(str(details.method))

        def answer(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            abort_standby(context, self.replica)
            yield b""  # never reached: a generator, so any call shape gets the status

        return grpc.stream_stream_rpc_method_handler(answer)


class StandbyReplica:
    """Serve a replica kit's fl and admin ports as a standby until stop()."""

    def __init__(self, kit_dir: Path) -> None:
        kit = load_kit(kit_dir)
        assert isinstance(kit.config, ServerConfig)
        self._handler = _AnyMethod(kit.config.replica or kit.name)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        self._server.add_generic_rpc_handlers((self._handler,))
        creds = server_credentials(kit)
        for port in (kit.config.fl_port, kit.config.admin_port):
            assert self._server.add_secure_port(f"127.0.0.1:{port}", creds) == port

    @property
    def calls(self) -> list[str]:
        """The methods called so far, in order ("/fedsec.Federation/Register", ...)."""
        return list(self._handler.calls)

    def start(self) -> StandbyReplica:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0).wait()

    def __enter__(self) -> StandbyReplica:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
