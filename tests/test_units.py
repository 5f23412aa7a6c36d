import pytest

from advisor.errors import UnitError
from advisor.units import GiB, MiB, format_bytes, parse_size


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * GiB), ("24", 24 * GiB), ("80GB", 80 * 10**9), ("512 MiB", 512 * MiB),
    ("1.5g", int(1.5 * GiB)), ("2TiB", 2 << 40),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "24 parsecs", "-3GiB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(UnitError):
        parse_size(text)


def test_format_bytes_uses_binary_units():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * MiB) == "3.00 MiB"
    assert format_bytes(int(16.31 * GiB)) == "16.31 GiB"
    assert format_bytes(-2 * GiB) == "-2.00 GiB"
