"""The server's start-up options: --fl-port (a server behind a NAT or a proxy) is checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.errors import ConfigError
from fedsec.kit import load_kit
from fedsec.server.app import run_server


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_bad_fl_port_is_refused_naming_the_option(prod: Path, port: int) -> None:
    with pytest.raises(ConfigError, match=f"--fl-port: must be a port number between 1 and 65535, got {port}"):
        run_server(load_kit(prod / "server1"), fl_port=port)
