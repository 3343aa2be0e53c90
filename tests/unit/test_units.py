import pytest

from clawpen.spec.units import UnitError, format_size, parse_cpus, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("64k", 64 << 10),
        ("1.5G", 3 << 29),
        ("2GiB", 2 << 30),
        (4096, 4096),
        ("100", 100),
        ("1536M", 1536 << 20),
        ("10mb", 10 << 20),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "12X", "-1M", -5, True, "1.2.3G"])
def test_parse_size_rejects_with_hint(bad):
    with pytest.raises(UnitError) as err:
        parse_size(bad)
    assert err.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        (90, 90.0),
        ("2.5", 2.5),
        ("1d", 86400.0),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["soon", "5x", "m5", -1, "1h 30m"])
def test_parse_duration_rejects(bad):
    with pytest.raises(UnitError):
        parse_duration(bad)


def test_parse_cpus():
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus(2) == 2.0
    for bad in ("0", "-1", "many", 0):
        with pytest.raises(UnitError):
            parse_cpus(bad)


def test_format_size_roundtrip():
    for n in (512 << 20, 2 << 30, 64 << 10, 1000):
        assert parse_size(format_size(n)) == n
