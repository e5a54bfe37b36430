"""A small MaxMind-format City database built with mmdb-writer, for geo enrichment tests."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# network -> (country ISO code, subdivision ISO code, city)
TEST_PLACES = {
    "203.0.113.0/24": ("DE", "BY", "Munich"),
    "198.51.100.0/24": ("GB", "ENG", "London"),
    "2001:db8:1::/48": ("JP", "13", "Tokyo"),
}


def build_city_database(path: Path) -> Path:
    """Write a City-layout database covering TEST_PLACES (IPv6 tree, IPv4 mapped in)."""
    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"]
    )
    for network, (country, subdivision, city) in TEST_PLACES.items():
        writer.insert_network(
            IPSet([network]),
            {
                "country": {"iso_code": country, "names": {"en": country}},
                "subdivisions": [{"iso_code": subdivision, "names": {"en": subdivision}}],
                "city": {"names": {"en": city}},
            },
        )
    writer.to_db_file(str(path))
    return path
