from __future__ import annotations

import pytest

from fedsec.client import api
from fedsec.errors import WireError


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 5000, "nested deeper than"),
        ("x", "not JSON"),
        ("[1]", "not an object"),
        ('{"n": ' + "9" * 500 + "}", "digits"),
    ],
)
def test_the_servers_meta_json_is_parsed_strictly(text: str, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        api._meta(text)


def test_meta_json_reads() -> None:
    assert api._meta("") == {} and api._meta('{"a": [1]}') == {"a": [1]}
