"""Privacy controls, rule by rule: scrubbing (emails, Luhn-checked cards, phones, custom
regexes), IP truncation, the policy checks and the cookieless form of an event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.privacy_policy import (
    PolicyError,
    PrivacyPolicy,
    check_policy,
    parse_scrub_rules,
)
from libs.common.schemas.events_v1 import EventV1
from services.ingest.privacy import (
    REDACTED,
    Scrubber,
    cookieless_event,
    luhn_valid,
    published_ip,
    truncate_ip,
)

ALL_RULES = Scrubber(("email", "card", "phone"), ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ada@example.com today", f"write to {REDACTED} today"),
        ("Ada.Lovelace+news@mail.example.co.uk", REDACTED),
        ("/confirm?email=ada%40example.com&x=1", f"/confirm?email={REDACTED}&x=1"),
        ("no address @ here", "no address @ here"),
        ("card 4111 1111 1111 1111 ok", f"card {REDACTED} ok"),
        ("4111-1111-1111-1111", REDACTED),
        ("5500005555555559", REDACTED),
        ("378282246310005", REDACTED),  # Amex, 15 digits
        ("order 4111111111111112", "order 4111111111111112"),  # fails Luhn: not a card
        ("ts 1700000000000", "ts 1700000000000"),  # 13 digits, fails Luhn
        ("call +44 20 7946 0958", f"call {REDACTED}"),
        ("+1-202-555-0173", REDACTED),
        ("(020) 7946 0958", REDACTED),
        ("202.555.0173 or 202-555-0173", f"{REDACTED} or {REDACTED}"),
        ("2024-01-15", "2024-01-15"),  # a date is not a phone number
        ("version 1.2.3", "version 1.2.3"),
        ("id 5551234567", "id 5551234567"),  # bare digit runs are ids, not phones
        ("price 12.99", "price 12.99"),
    ],
)
def test_builtin_rules(text: str, expected: str) -> None:
    assert ALL_RULES.text(text) == expected


def test_only_the_projects_rules_apply() -> None:
    emails_only = Scrubber(("email",), ())
    assert emails_only.text("ada@example.com 4111 1111 1111 1111") == (
        f"{REDACTED} 4111 1111 1111 1111"
    )
    assert not Scrubber((), ()).active


def test_custom_regexes_redact_their_matches() -> None:
    scrubber = Scrubber((), (r"\bACME-\d{6}\b", r"(?i)secret=\w+"))
    assert scrubber.text("ticket ACME-123456 and SECRET=abc") == f"ticket {REDACTED} and {REDACTED}"


def test_nested_values_are_scrubbed_and_keys_kept() -> None:
    value = {
        "contact": {"email": "ada@example.com", "phones": ["+44 20 7946 0958", 7]},
        "ada@example.com": True,
        "count": 3,
    }
    assert ALL_RULES.value(value) == {
        "contact": {"email": REDACTED, "phones": [REDACTED, 7]},
        "ada@example.com": True,
        "count": 3,
    }


def test_event_fields_scrubbed() -> None:
    now = datetime.now(UTC)
    event = EventV1(
        event_id="e",
        project_id="p",
        type="page",
        name="$pageview",
        ts=now,
        received_at=now,
        distinct_id="d",
        properties={"q": "ada@example.com"},
        traits={"phone": "+1-202-555-0173"},
        url="https://shop.example/?email=ada@example.com",
        path="/u/ada@example.com",
        title="Order for ada@example.com",
        referrer="https://mail.example/?to=ada%40example.com",
        utm_term="ada@example.com",
    )
    scrubbed = ALL_RULES.event(event)
    assert scrubbed.properties == {"q": REDACTED}
    assert scrubbed.traits == {"phone": REDACTED}
    assert scrubbed.url == f"https://shop.example/?email={REDACTED}"
    assert scrubbed.path == f"/u/{REDACTED}"
    assert scrubbed.title == f"Order for {REDACTED}"
    assert scrubbed.referrer == f"https://mail.example/?to={REDACTED}"
    assert scrubbed.utm_term == REDACTED


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("79927398713", True), ("79927398710", False), ("0", True)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("ip", "truncated"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("not-an-ip", None),
    ],
)
def test_ip_truncation(ip: str, truncated: str | None) -> None:
    assert truncate_ip(ip) == truncated


def test_ip_policies() -> None:
    assert published_ip("203.0.113.77", "drop") is None
    assert published_ip("203.0.113.77", "truncate") == "203.0.113.0"
    assert published_ip("203.0.113.77", "keep") == "203.0.113.77"
    assert published_ip(None, "keep") is None


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (PrivacyPolicy(ip_policy="hash"), "ip policy must be one of drop, truncate, keep"),
        (PrivacyPolicy(consent_policy="keep"), "consent policy must be one of drop, cookieless"),
        (PrivacyPolicy(scrub_rules=("ssn",)), "scrub rule must be one of email, card, phone"),
        (PrivacyPolicy(scrub_regexes=("(",)), "scrub regex '(' is invalid"),
        (PrivacyPolicy(scrub_regexes=("a*",)), "matches the empty string"),
    ],
)
def test_invalid_policies_are_refused(policy: PrivacyPolicy, error: str) -> None:
    with pytest.raises(PolicyError, match=error.replace("(", r"\(")):
        check_policy(policy)


def test_scrub_rule_lists() -> None:
    assert parse_scrub_rules("email, Card,email") == ("email", "card")
    assert parse_scrub_rules("none") == ()
    with pytest.raises(PolicyError):
        parse_scrub_rules("email,ssn")


def test_cookieless_event_keeps_no_persistent_id() -> None:
    now = datetime.now(UTC)
    event = EventV1(
        event_id="e",
        project_id="p",
        type="track",
        name="Clicked",
        ts=now,
        received_at=now,
        distinct_id="anon-1",
        anonymous_id="anon-1",
        user_id="u-1",
        traits={"email": "a@b.c"},
        properties={"button": "buy"},
    )
    stripped = cookieless_event(event, "cl-abc")
    assert (stripped.distinct_id, stripped.anonymous_id, stripped.user_id) == (
        "cl-abc",
        None,
        None,
    )
    assert stripped.traits == {}
    assert stripped.properties == {"button": "buy", "$cookieless": True}
    assert event.properties == {"button": "buy"}  # the original is not modified
