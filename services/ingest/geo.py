"""Country, region and city of an IP address from a MaxMind-format database (GeoLite2-City,
GeoIP2-City, DB-IP's City Lite or any `.mmdb` with the same record layout).

Country is the ISO 3166-1 alpha-2 code (`DE`), region the ISO 3166-2 code of the first
subdivision (`DE-BY`), city the English name. Lookups are cached per address.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import maxminddb

from libs.common.errors import StrataError


class GeoDatabaseError(StrataError, RuntimeError):
    """The configured database cannot be opened."""

    code = "invalid_geo_database"


class Place(NamedTuple):
    country: str | None
    region: str | None
    city: str | None


NOWHERE = Place(None, None, None)


def _english_name(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    names = record.get("names")
    return names.get("en") if isinstance(names, dict) else None


def place_of(record: Any) -> Place:
    """The place held in one database record (City or Country layout)."""
    if not isinstance(record, dict):
        return NOWHERE
    country_record = record.get("country") or record.get("registered_country")
    country = country_record.get("iso_code") if isinstance(country_record, dict) else None
    region = None
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
        code = subdivisions[0].get("iso_code")
        region = f"{country}-{code}" if country and code else _english_name(subdivisions[0])
    return Place(country, region, _english_name(record.get("city")))


class GeoLocator:
    """Looks addresses up in an open database; `close()` releases it."""

    def __init__(self, path: str) -> None:
        try:
            self._reader = maxminddb.open_database(path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"cannot open the GeoIP database {path}: {exc}") from None
        self.locate = lru_cache(maxsize=65536)(self._locate)

    def _locate(self, ip: str) -> Place:
        try:
            return place_of(self._reader.get(ip))
        except (ValueError, maxminddb.InvalidDatabaseError):
            # Not an address, or an IPv6 address in an IPv4-only database.
            return NOWHERE

    def close(self) -> None:
        self._reader.close()
