"""A project's privacy controls applied to each event before it is published (docs/privacy.md):
value scrubbing, the IP policy and the cookieless form of an event sent without analytics
consent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import msgspec

from libs.common.privacy_policy import (
    IP_KEEP,
    IP_TRUNCATE,
    SCRUB_CARD,
    SCRUB_EMAIL,
    SCRUB_PHONE,
    PrivacyPolicy,
)
from libs.common.schemas.events_v1 import EventV1

REDACTED = "[redacted]"
# The property that marks an event recorded without persistent ids (consent withheld, or the
# browser tracker's cookieless mode); the query service's cookieless_share counts it.
COOKIELESS_PROPERTY = "$cookieless"

# An address as typed, or percent-encoded inside a URL (`a%40b.com`).
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes; kept only when the Luhn check passes,
# so order numbers and timestamps of that length survive.
CARD_CANDIDATE = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
# International numbers (+country code), a parenthesised area code, or North America's
# 3-3-4 grouping. Bare digit runs are not phone numbers here: they are far more often ids,
# amounts or timestamps.
PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}(?:[ .-]?\d{2,4}){1,4}(?![\w])"
    r"|(?<![\w])\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])"
    r"|(?<![\w.-])\d{3}[ .-]\d{3}[ .-]\d{4}(?![\w.-])"
)


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn check (card numbers do)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_or_keep(match: re.Match[str]) -> str:
    digits = match.group(0).replace(" ", "").replace("-", "")
    return REDACTED if luhn_valid(digits) else match.group(0)


def _phone_or_keep(match: re.Match[str]) -> str:
    digits = sum(char.isdigit() for char in match.group(0))
    return REDACTED if 7 <= digits <= 15 else match.group(0)


# The event fields the scrubbing rules apply to (JSON values or text).
SCRUBBED_FIELDS = (
    "properties",
    "traits",
    "url",
    "path",
    "title",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
)


class Scrubber:
    """Redacts the project's rules' matches in strings and, recursively, in JSON values."""

    def __init__(self, rules: tuple[str, ...], regexes: tuple[str, ...]) -> None:
        steps: list[Callable[[str], str]] = []
        # Cards before phones: a spaced card number also looks like a phone number.
        if SCRUB_CARD in rules:
            steps.append(lambda text: CARD_CANDIDATE.sub(_card_or_keep, text))
        if SCRUB_EMAIL in rules:
            steps.append(lambda text: EMAIL.sub(REDACTED, text))
        if SCRUB_PHONE in rules:
            steps.append(lambda text: PHONE.sub(_phone_or_keep, text))
        for pattern in regexes:
            steps.append(partial(re.compile(pattern).sub, REDACTED))
        self._steps = tuple(steps)
        self.active = bool(steps)

    def text(self, value: str) -> str:
        """`value` with every match of the rules replaced by "[redacted]"."""
        for step in self._steps:
            value = step(value)
        return value

    def value(self, value: Any) -> Any:
        """A JSON value with its strings scrubbed (keys are names, not data, and are kept)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.value(item) for item in value]
        return value

    def event(self, event: EventV1) -> EventV1:
        """The event with properties, traits, URL, path, title, referrer and UTM tags scrubbed."""
        if not self.active:
            return event
        changes: dict[str, Any] = {}
        for field in SCRUBBED_FIELDS:
            value = getattr(event, field)
            if value is not None and (type(value) is not dict or value):
                changes[field] = self.value(value)
        return msgspec.structs.replace(event, **changes)


@lru_cache(maxsize=65536)
def truncate_ip(ip: str) -> str | None:
    """The network of an address: IPv4 to its /24 (`203.0.113.0`), IPv6 to its /48
    (`2001:db8:1::`); None when `ip` is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def published_ip(ip: str | None, ip_policy: str) -> str | None:
    """What of the client IP goes on the event under the project's IP policy."""
    if ip is None:
        return None
    if ip_policy == IP_KEEP:
        return ip
    if ip_policy == IP_TRUNCATE:
        return truncate_ip(ip)
    return None


class ProjectPrivacy:
    """A project's policy, ready to apply (regexes compiled once per key-cache entry)."""

    __slots__ = ("consent_policy", "ip_policy", "policy", "scrubber")

    def __init__(self, policy: PrivacyPolicy) -> None:
        self.policy = policy
        self.ip_policy = policy.ip_policy
        self.consent_policy = policy.consent_policy
        self.scrubber = Scrubber(policy.scrub_rules, policy.scrub_regexes)


def cookieless_fields(properties: dict[str, Any], cookieless_id: str) -> dict[str, Any]:
    """The fields that make an event cookieless: no anonymous or user id, no traits; the
    device key is the daily-salted `cookieless_id`; the properties (a copy) are marked."""
    marked = dict(properties)
    marked[COOKIELESS_PROPERTY] = True
    return {
        "distinct_id": cookieless_id,
        "anonymous_id": None,
        "user_id": None,
        "previous_id": None,
        "traits": {},
        "properties": marked,
    }


def cookieless_event(event: EventV1, cookieless_id: str) -> EventV1:
    """The event without anything that identifies a person across days (`cookieless_fields`)."""
    return msgspec.structs.replace(event, **cookieless_fields(event.properties, cookieless_id))
