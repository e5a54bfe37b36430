"""Client IPs behind proxies, IP network lists (bot ranges) and geo lookups in a MaxMind-format
database built for the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ingest.geo import GeoDatabaseError, GeoLocator, Place
from services.ingest.networks import (
    NetworkListError,
    NetworkSet,
    client_ip,
    load_network_file,
    parse_network_list,
    valid_ip,
)
from tests.support.geoip import build_city_database

PROXIES = NetworkSet(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("remote", "forwarded_for", "client"),
    [
        ("198.51.100.7", None, "198.51.100.7"),
        # An untrusted peer's X-Forwarded-For is the client's own claim: ignored.
        ("198.51.100.7", "203.0.113.9", "198.51.100.7"),
        ("10.1.2.3", "203.0.113.9", "203.0.113.9"),
        # Left entries were written by the client: the right-most untrusted hop counts.
        ("10.1.2.3", "1.2.3.4, 203.0.113.9", "203.0.113.9"),
        ("10.1.2.3", "203.0.113.9, 10.9.9.9", "203.0.113.9"),
        ("10.1.2.3", "10.7.7.7, 10.9.9.9", "10.7.7.7"),
        ("fd00::1", "2001:db8:1::5", "2001:db8:1::5"),
        ("10.1.2.3", "203.0.113.9:5555", "203.0.113.9"),
        ("10.1.2.3", "[2001:db8:1::5]:443", "2001:db8:1::5"),
        ("10.1.2.3", "unknown", "10.1.2.3"),
        ("10.1.2.3", "", "10.1.2.3"),
        (None, "203.0.113.9", None),
    ],
)
def test_client_ip_behind_trusted_proxies(
    remote: str | None, forwarded_for: str | None, client: str | None
) -> None:
    assert client_ip(remote, forwarded_for, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_ip("10.1.2.3", "203.0.113.9", NetworkSet([])) == "10.1.2.3"


def test_network_sets_match_v4_v6_and_mapped_addresses() -> None:
    ranges = NetworkSet(["66.249.64.0/19", "66.249.96.0/20", "2001:4860:4801::/48", "192.0.2.1"])
    assert ranges.contains("66.249.66.1")
    assert ranges.contains("66.249.111.255")
    assert not ranges.contains("66.249.112.0")
    assert ranges.contains("2001:4860:4801:10::1")
    assert not ranges.contains("2001:4860:4802::1")
    assert ranges.contains("::ffff:66.249.66.1")
    assert ranges.contains("192.0.2.1") and not ranges.contains("192.0.2.2")
    assert not ranges.contains("nonsense")
    assert ranges.size == 4


def test_network_files(tmp_path: Path) -> None:
    path = tmp_path / "bots.txt"
    path.write_text(
        "# crawler ranges\n66.249.64.0/19  # Googlebot\n\n157.55.39.0/24, 40.77.167.0/24\n"
    )
    assert parse_network_list(path.read_text()) == [
        "66.249.64.0/19",
        "157.55.39.0/24",
        "40.77.167.0/24",
    ]
    assert load_network_file(str(path)).contains("40.77.167.3")
    path.write_text("66.249.64.0/19\nnot-a-cidr\n")
    with pytest.raises(NetworkListError, match="'not-a-cidr' is not an IP network"):
        load_network_file(str(path))
    with pytest.raises(NetworkListError, match="cannot read"):
        load_network_file(str(tmp_path / "missing.txt"))


def test_valid_ip() -> None:
    assert valid_ip("2001:DB8::1") == "2001:db8::1"
    assert valid_ip("203.0.113.9") == "203.0.113.9"
    assert valid_ip("localhost") is None
    assert valid_ip(None) is None


def test_geo_lookups_for_ipv4_and_ipv6(tmp_path: Path) -> None:
    geo = GeoLocator(str(build_city_database(tmp_path / "city.mmdb")))
    try:
        assert geo.locate("203.0.113.77") == Place("DE", "DE-BY", "Munich")
        assert geo.locate("198.51.100.1") == Place("GB", "GB-ENG", "London")
        assert geo.locate("2001:db8:1:ff::9") == Place("JP", "JP-13", "Tokyo")
        assert geo.locate("192.0.2.1") == Place(None, None, None)
        assert geo.locate("2001:db8:2::1") == Place(None, None, None)
        assert geo.locate("not an ip") == Place(None, None, None)
    finally:
        geo.close()


def test_an_unreadable_geo_database_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a database")
    with pytest.raises(GeoDatabaseError, match="cannot open the GeoIP database"):
        GeoLocator(str(broken))
    with pytest.raises(GeoDatabaseError):
        GeoLocator(str(tmp_path / "missing.mmdb"))
