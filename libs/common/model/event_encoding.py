"""How an event's properties and anonymous id are stored in `events`, and the SQL that reads
them back as they were sent.

A value the row already holds in a column is left out (migration 0025): a pageview's
properties repeat its path, url, title (as `title` and as Segment's `name`), referrer and
query string, and `anonymous_id` is nearly always `distinct_id`. The row's `derived_fields`
says which were left out, one bit each; the SQL functions `event_properties` and
`event_anonymous_id` (migration 0025) put them back. Every reader of either column selects it
through `restored_sql`, so the API, the day files, the hot rows, filters and erasure all see
what was sent. Rows without `derived_fields` (written before 0025) hold every value and read
unchanged.

A pageview's `referrer` property that is the previous page of the same site (the `referrer`
column holds the session's external referrer) is stored relative to the page's origin
(migration 0026): `/pricing` for `https://shop.example/pricing` on a page of
`https://shop.example`, restored by prefixing `url_origin(url)`.

Google Analytics' `nonInteraction: 1`, which made the event non-interactive, is what the
`non_interactive` column already says: it is left out with bit 256 (migration 0027) and
restored as the number 1.

The `$search_engine` and `$social_network` properties (ingest's enrichment names them from
the referrer or the UTM source), when strings, are stored with the row's source in
`event_sources` (`SOURCE_PROPERTIES`, bits 512 and 1024, migration 0034): the `events` view's
`properties` puts them back, before `event_properties` adds the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from libs.common.schemas.events_v1 import EventV1

ANONYMOUS_ID_IS_DISTINCT_ID = 64
REFERRER_RELATIVE_TO_ORIGIN = 128
NON_INTERACTION_FLAG = 256  # `nonInteraction: 1` left out: the non_interactive column says it
# (bit, property key) of the properties the row's source holds (`Dictionary.properties` of
# libs/common/event_dictionary.py, in the same order).
SOURCE_PROPERTIES: tuple[tuple[int, str], ...] = (
    (512, "$search_engine"),
    (1024, "$social_network"),
)
_NON_INTERACTION = "nonInteraction"

# scheme://authority, as `url_origin` in SQL (migration 0026) matches it.
_ORIGIN = re.compile(r"[^:/?#]+://[^/?#]*")


def url_search(url: str) -> str:
    """The query string of a URL as browsers report it in `location.search` (`url_search` in
    SQL computes the same): from the first '?' before any '#' up to the '#', else ''."""
    before_fragment = url.split("#", 1)[0]
    start = before_fragment.find("?")
    return "" if start < 0 else before_fragment[start:]


def url_origin(url: str) -> str | None:
    """A URL's scheme and authority (`https://shop.example:8443`), None when it has none
    (`url_origin` in SQL computes the same)."""
    match = _ORIGIN.match(url)
    return None if match is None else match.group()


def _search(ev: EventV1) -> str | None:
    return None if ev.url is None else url_search(ev.url)


# (bit, property key, the column value it must equal to be left out), as event_properties reads
# them back.
DERIVED_PROPERTIES: tuple[tuple[int, str, Callable[[EventV1], str | None]], ...] = (
    (1, "path", lambda ev: ev.path),
    (2, "url", lambda ev: ev.url),
    (4, "title", lambda ev: ev.title),
    (8, "name", lambda ev: ev.title),
    (16, "referrer", lambda ev: ev.referrer),
    (32, "search", _search),
)
_DERIVED_KEYS = frozenset(key for _, key, _ in DERIVED_PROPERTIES)
_SOURCE_KEYS = frozenset(key for _, key in SOURCE_PROPERTIES)
_LEFT_OUT_KEYS = _DERIVED_KEYS | {_NON_INTERACTION} | _SOURCE_KEYS

_json = msgspec.json.Encoder()


def stored_event_fields(ev: EventV1) -> tuple[str | None, str | None, int | None]:
    """(anonymous_id, properties as JSON text, derived_fields) as the row stores them."""
    derived = 0
    properties: dict[str, Any] = ev.properties
    if not _LEFT_OUT_KEYS.isdisjoint(properties):
        kept = dict(properties)
        for bit, key, column in DERIVED_PROPERTIES:
            value = kept.get(key)
            # Only a string equal to the column: a number or null of the same text is not it.
            if type(value) is str and value == column(ev):
                del kept[key]
                derived |= bit
        referrer = kept.get("referrer")
        if type(referrer) is str and ev.url is not None:
            # An in-site referrer: only the part after the page's origin is stored.
            origin = url_origin(ev.url)
            if origin is not None and referrer.startswith(origin + "/"):
                kept["referrer"] = referrer[len(origin) :]
                derived |= REFERRER_RELATIVE_TO_ORIGIN
        flag = kept.get(_NON_INTERACTION)
        # Only the number 1 (not true, "1" or 1.0: they would not read back the same).
        if type(flag) is int and flag == 1 and ev.non_interactive:
            del kept[_NON_INTERACTION]
            derived |= NON_INTERACTION_FLAG
        if not _SOURCE_KEYS.isdisjoint(kept):
            for bit, key in SOURCE_PROPERTIES:
                # Any string: the source stores it as it is (the writer's `_source_of`).
                if type(kept.get(key)) is str:
                    del kept[key]
                    derived |= bit
        properties = kept
    # Properties reduced to nothing are NULL (event_properties starts from '{}'); otherwise
    # '{}' stays '{}'.
    stored = None if derived and not properties else _json.encode(properties).decode()
    anonymous_id = ev.anonymous_id
    if anonymous_id is not None and anonymous_id == ev.distinct_id:
        anonymous_id = None
        derived |= ANONYMOUS_ID_IS_DISTINCT_ID
    return anonymous_id, stored, derived or None


def restored_sql(column: str, alias: str = "e") -> str:
    """The SQL expression reading `column` of `events` (as `alias`) as it was sent: the
    restoring function for properties and anonymous_id, the column itself for the others."""
    a = alias
    if column == "properties":
        return (
            f"event_properties({a}.properties, {a}.derived_fields,"
            f" {a}.path, {a}.url, {a}.title, {a}.referrer)"
        )
    if column == "anonymous_id":
        return f"event_anonymous_id({a}.anonymous_id, {a}.derived_fields, {a}.distinct_id)"
    return f"{a}.{column}"
