"""Session assignment rules at their boundaries, worked out by hand.

Each case lists events in ARRIVAL order (each its own raw message) and the expected sessions as
groups of event ids in arrival order; a group's session id must be the hash of the event that
created it (the group's first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from libs.common.schemas.events_v1 import (
    EnrichedBatchV1,
    EventV1,
    SessionUpdateBatchV1,
)
from libs.common.settings import SessionizerSettings, SettingsError
from libs.common.subjects import Subjects
from services.sessionizer.checkpoints import decode_state, encode_state
from services.sessionizer.enriched_messages import build_messages
from services.sessionizer.partition_worker import InvalidRawBatch, decode_raw_batch
from services.sessionizer.service import instance_ordinal, owned_partitions
from services.sessionizer.session_window import (
    MAX_SESSIONS_PER_PERSON,
    PartitionSessions,
    SessionRules,
    campaign_of,
    session_id_for,
    sessionize_batch,
)

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # a winter day: New York is UTC-5
M = timedelta(minutes=1)
S = timedelta(seconds=1)
H = timedelta(hours=1)


def ev(
    event_id: str,
    at: timedelta | datetime,
    person: str = "p1",
    project: str = "acme",
    name: str = "$pageview",
    **fields: Any,
) -> EventV1:
    ts = at if isinstance(at, datetime) else T0 + at
    fields.setdefault("received_at", max(ts, T0 + 30 * H))
    return EventV1(
        event_id=event_id,
        project_id=project,
        type="page" if name == "$pageview" else "track",
        name=name,
        ts=ts,
        distinct_id=person,
        **fields,
    )


def sessionize_one_by_one(
    events: list[EventV1], rules: SessionRules, state: PartitionSessions | None = None
) -> tuple[dict[str, str], PartitionSessions]:
    """event id -> session id, each event arriving as its own raw message."""
    state = state if state is not None else PartitionSessions()
    assigned: dict[str, str] = {}
    for seq, event in enumerate(events, start=1):
        result = sessionize_batch(state, [event], seq, lambda _: rules)
        for out in result.events:
            assert out.session_id is not None
            assigned[out.event_id] = out.session_id
    return assigned, state


def groups_of(assigned: dict[str, str], events: list[EventV1]) -> list[list[str]]:
    by_session: dict[str, list[str]] = {}
    for event in events:  # arrival order, so a group's first id created the session
        by_session.setdefault(assigned[event.event_id], []).append(event.event_id)
    return sorted(by_session.values())


@dataclass
class Case:
    name: str
    rules: SessionRules
    events: list[EventV1]
    expected: list[list[str]]
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


UTC_RULES = SessionRules()
NY_EVENING = datetime(2026, 1, 16, 0, 30, tzinfo=UTC)  # 19:30 in New York
NY_MIDNIGHT = SessionRules(split_midnight=True, timezone="America/New_York")
CAMPAIGN = SessionRules(split_campaign=True)
SITE = "https://shop.example.com/"


def _every_20_minutes_for_a_day() -> list[EventV1]:
    # 0:00, 0:20, ..., 23:40 (72 events, gaps of 20 min), then 23:59:59.999999 (still inside
    # the 24 h cap: it joins), then exactly 24:00:00 after the start (cut: a new session).
    events = [ev(f"c{i:02d}", i * 20 * M) for i in range(72)]
    events.append(ev("c_last_in", 24 * H - timedelta(microseconds=1)))
    events.append(ev("c_cut", 24 * H))
    return events


CASES = [
    Case(
        "a gap of exactly 30:00 continues the session",
        UTC_RULES,
        [ev("a", 0 * M), ev("b", 30 * M)],
        [["a", "b"]],
    ),
    Case(
        "a gap of 30:01 starts a new session",
        UTC_RULES,
        [ev("a", 0 * M), ev("b", 30 * M + S)],
        [["a"], ["b"]],
    ),
    Case(
        "the gap is measured from the previous event, not the session start",
        UTC_RULES,
        [ev("a", 0 * M), ev("b", 29 * M), ev("c", 58 * M), ev("d", 88 * M + S)],
        [["a", "b", "c"], ["d"]],
    ),
    Case(
        "24 h cap: an event at start + 24:00:00 starts a new session, one just before joins",
        UTC_RULES,
        _every_20_minutes_for_a_day(),
        [[f"c{i:02d}" for i in range(72)] + ["c_last_in"], ["c_cut"]],
    ),
    Case(
        "midnight split off: a session runs across midnight",
        UTC_RULES,
        [ev("a", datetime(2026, 1, 15, 23, 50, tzinfo=UTC)), ev("b", T0 + 12 * H + 10 * M)],
        [["a", "b"]],
    ),
    Case(
        "midnight split on: cut at New York midnight (05:00 UTC), not at UTC midnight",
        NY_MIDNIGHT,
        [
            # 18:50 and 19:10 New York time straddle UTC midnight: one session.
            ev("a", datetime(2026, 1, 15, 23, 50, tzinfo=UTC)),
            ev("b", datetime(2026, 1, 16, 0, 10, tzinfo=UTC)),
            # 23:50 and 00:10 New York time straddle local midnight: split. (Gaps are kept
            # under 30 min by an event every 20 min in between.)
            *[
                ev(f"m{i}", datetime(2026, 1, 16, 0, 30, tzinfo=UTC) + i * 20 * M)
                for i in range(13)
            ],
            ev("y", datetime(2026, 1, 16, 4, 50, tzinfo=UTC)),
            ev("z", datetime(2026, 1, 16, 5, 10, tzinfo=UTC)),
        ],
        [["a", "b", *[f"m{i}" for i in range(13)], "y"], ["z"]],
    ),
    Case(
        "campaign split on: a new UTM campaign or an external referrer starts a session",
        CAMPAIGN,
        [
            ev("a", 0 * M, url=SITE, utm_source="google", utm_medium="cpc"),
            ev("b", 5 * M, url=SITE + "p2", referrer_domain="shop.example.com"),  # internal
            ev("c", 10 * M, url=SITE, utm_source="newsletter", utm_medium="email"),
            ev("d", 12 * M, url=SITE, referrer_domain="www.facebook.com"),
            ev("e", 14 * M, url=SITE, referrer_domain="example.com"),  # same site: internal
            ev("f", 16 * M, url=SITE, referrer_domain="facebook.com"),  # same source again
        ],
        [["a", "b"], ["c"], ["d", "e", "f"]],
    ),
    Case(
        "campaign split off: the same traffic keeps one session",
        UTC_RULES,
        [
            ev("a", 0 * M, url=SITE, utm_source="google", utm_medium="cpc"),
            ev("c", 10 * M, url=SITE, utm_source="newsletter", utm_medium="email"),
            ev("d", 12 * M, url=SITE, referrer_domain="www.facebook.com"),
        ],
        [["a", "c", "d"]],
    ),
    Case(
        "campaign split: a direct start takes the first campaign that arrives",
        CAMPAIGN,
        [
            ev("a", 0 * M, name="$identify", url=SITE),  # browsers send the page along
            ev("b", 1 * M, url=SITE, utm_source="google"),
            ev("c", 2 * M, url=SITE, utm_source="bing"),
        ],
        [["a", "b"], ["c"]],
    ),
    Case(
        "campaign split: a non-interactive event never splits",
        CAMPAIGN,
        [
            ev("a", 0 * M, url=SITE, utm_source="google"),
            ev("h", 5 * M, name="heartbeat", url=SITE, utm_source="bing", non_interactive=True),
            ev("b", 6 * M, url=SITE + "p2"),
        ],
        [["a", "h", "b"]],
    ),
    Case(
        "out of order: late events join the session whose window holds them",
        UTC_RULES,
        [
            ev("a", 0 * M),
            ev("b", 10 * M),
            ev("c", 50 * M),  # 40 min after b: a second session
            ev("late_in_first", 5 * M),
            ev("late_before_second", 45 * M),  # 35 min after b, 5 min before c
            ev("late_before_first", -20 * M),  # moves the first session's start back
            ev("too_early", -2 * H),  # beyond every window: its own session
        ],
        [
            ["a", "b", "late_in_first", "late_before_first"],
            ["c", "late_before_second"],
            ["too_early"],
        ],
    ),
    Case(
        "out of order: a late event between two sessions joins the earlier, never merges them",
        UTC_RULES,
        [
            ev("a", 0 * M),
            ev("b", 10 * M),
            ev("c", 50 * M),
            ev("d", 60 * M),
            ev("bridge", 30 * M),  # 20 min from both: the tie goes to the earlier session
            ev("e", 55 * M),
        ],
        [["a", "b", "bridge"], ["c", "d", "e"]],
    ),
    Case(
        "out of order: a late event may not stretch a session past the 24 h cap",
        UTC_RULES,
        [ev(f"c{i:02d}", i * 20 * M) for i in range(72)] + [ev("late", -20 * M)],
        [[f"c{i:02d}" for i in range(72)], ["late"]],
    ),
    Case(
        "non-interactive events keep a session alive",
        UTC_RULES,
        [
            ev("a", 0 * M),
            ev("h1", 25 * M, name="heartbeat", non_interactive=True, url=SITE),
            ev("h2", 50 * M, name="heartbeat", non_interactive=True, url=SITE),
            ev("b", 70 * M),
            ev("h3", 101 * M, name="heartbeat", non_interactive=True, url=SITE),  # 31 min: new
        ],
        [["a", "h1", "h2", "b"], ["h3"]],
    ),
    Case(
        "two persons interleaved keep their own sessions",
        UTC_RULES,
        [
            ev("p1a", 0 * M, person="p1"),
            ev("p2a", 5 * M, person="p2"),
            ev("p1b", 20 * M, person="p1"),
            ev("p2b", 40 * M, person="p2"),  # 35 min after p2a: new session for p2
            ev("p1c", 45 * M, person="p1"),  # 25 min after p1b: same session for p1
        ],
        [["p1a", "p1b", "p1c"], ["p2a"], ["p2b"]],
    ),
    Case(
        "the same distinct id in two projects is two persons",
        UTC_RULES,
        [ev("x1", 0 * M, project="acme"), ev("y1", 1 * M, project="beta")],
        [["x1"], ["y1"]],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_session_assignment(case: Case) -> None:
    assigned, _ = sessionize_one_by_one(case.events, case.rules)
    assert groups_of(assigned, case.events) == sorted(case.expected)
    by_id = {e.event_id: e for e in case.events}
    for group in case.expected:
        creator = by_id[group[0]]
        assert assigned[group[0]] == session_id_for(
            creator.project_id, creator.distinct_id, creator.event_id
        ), f"{group} keeps the id of the event that created it"


def test_bounce_counts_only_interactive_events() -> None:
    state = PartitionSessions()
    rules = UTC_RULES
    events = [ev("a", 0 * M), ev("h", 5 * M, name="scroll", non_interactive=True)]
    result = None
    for seq, event in enumerate(events, 1):
        result = sessionize_batch(state, [event], seq, lambda _: rules)
    assert result is not None
    window = result.touched[0].window
    # A page view plus a scroll: 2 events, 1 interactive -> still a bounce downstream.
    assert (window.events, window.interactive_events) == (2, 1)
    result = sessionize_batch(state, [ev("b", 6 * M, name="click")], 3, lambda _: rules)
    window = result.touched[0].window
    assert (window.events, window.interactive_events) == (3, 2)  # a second interaction: no bounce


def test_events_of_one_raw_batch_are_placed_in_event_time_order() -> None:
    state = PartitionSessions()
    batch = [ev("later", 10 * M), ev("earlier", 0 * M)]
    result = sessionize_batch(state, batch, 1, lambda _: UTC_RULES)
    assert [e.event_id for e in result.events] == ["earlier", "later"]
    assert {e.session_id for e in result.events} == {session_id_for("acme", "p1", "earlier")}
    assert result.sessions_started == 1
    update = result.touched[0]
    assert (update.window.start_us, update.window.end_us) == (
        int(T0.timestamp()) * 1_000_000,
        int((T0 + 10 * M).timestamp()) * 1_000_000,
    )


def test_session_update_describes_the_session_after_the_batch() -> None:
    from services.sessionizer.session_window import session_update

    state = PartitionSessions()
    sessionize_batch(
        state,
        [ev("a", 5 * M, path="/pricing", channel="search", referrer_domain="google.com")],
        1,
        lambda _: UTC_RULES,
    )
    result = sessionize_batch(
        state,
        [ev("b", 0 * M, path="/", user_id="u1"), ev("c", 9 * M, path="/buy")],
        2,
        lambda _: UTC_RULES,
    )
    [touched] = result.touched
    update = session_update(touched)
    assert update.session_id == session_id_for("acme", "p1", "a")
    assert (update.start, update.end) == (T0, T0 + 9 * M)
    assert (update.events, update.interactive_events) == (3, 3)
    assert update.entry_path == "/"  # the earliest event's page, although it arrived late
    assert update.user_id == "u1"
    assert (update.channel, update.referrer_domain) == ("search", "google.com")


def test_replay_from_a_checkpoint_assigns_the_same_sessions() -> None:
    first = [ev("a", 0 * M), ev("b", 10 * M, person="p2")]
    second = [ev("c", 20 * M), ev("d", 12 * M, person="p2"), ev("e", 55 * M, person="p2")]
    _, state = sessionize_one_by_one(first, UTC_RULES)
    blob = encode_state(state)

    straight, _ = sessionize_one_by_one(second, UTC_RULES, state)
    replayed, _ = sessionize_one_by_one(second, UTC_RULES, decode_state(blob))
    assert straight == replayed
    assert straight["c"] == session_id_for("acme", "p1", "a")  # continues across the checkpoint
    assert straight["d"] == session_id_for("acme", "p2", "b")
    assert straight["e"] == session_id_for("acme", "p2", "e")


def test_a_person_keeps_a_bounded_number_of_recent_sessions() -> None:
    events = [ev(f"s{i}", i * 2 * H) for i in range(MAX_SESSIONS_PER_PERSON + 5)]
    _, state = sessionize_one_by_one(events, UTC_RULES)
    person = state.persons["acme"]["p1"]
    assert len(person.sessions) == MAX_SESSIONS_PER_PERSON
    kept = {s.session_id for s in person.sessions}
    newest = events[-MAX_SESSIONS_PER_PERSON:]
    assert kept == {session_id_for("acme", "p1", e.event_id) for e in newest}


def test_pruning_forgets_only_persons_no_event_can_reach() -> None:
    rules = UTC_RULES
    state = PartitionSessions()
    day = 24 * H
    sessionize_batch(state, [ev("old", 0 * M, person="gone", received_at=T0)], 1, lambda _: rules)
    # A person being backfilled with equally old events, but received just now.
    now = T0 + 2 * day
    sessionize_batch(
        state, [ev("back", 1 * M, person="backfill", received_at=now)], 2, lambda _: rules
    )
    sessionize_batch(state, [ev("new", now, person="live", received_at=now)], 3, lambda _: rules)
    removed = state.prune(lambda _: rules)
    assert removed == 1
    assert set(state.persons["acme"]) == {"backfill", "live"}
    # The backfilled person's session is still there to be continued.
    nxt = sessionize_batch(
        state, [ev("back2", 11 * M, person="backfill", received_at=now)], 4, lambda _: rules
    )
    assert nxt.events[0].session_id == session_id_for("acme", "backfill", "back")


def test_pruning_runs_at_points_fixed_by_the_messages() -> None:
    rules = UTC_RULES
    state = PartitionSessions()
    sessionize_batch(state, [ev("old", 0 * M, person="gone", received_at=T0)], 1, lambda _: rules)
    later = T0 + 3 * 24 * H
    result = sessionize_batch(
        state, [ev("x", later, person="live", received_at=later)], 2, lambda _: rules
    )
    assert result.persons_pruned == 1  # the receipt clock advanced past a prune point
    assert set(state.persons["acme"]) == {"live"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"utm_source": "google", "utm_medium": "cpc"}, "utm:google|cpc|"),
        ({"url": SITE, "referrer_domain": "www.Google.com"}, "ref:google.com"),
        ({"url": SITE, "referrer_domain": "shop.example.com"}, None),
        ({"url": SITE, "referrer_domain": "example.com"}, None),
        ({"referrer_domain": "news.ycombinator.com"}, "ref:news.ycombinator.com"),
    ],
)
def test_campaign_of(fields: dict[str, Any], expected: str | None) -> None:
    assert campaign_of(ev("a", 0 * M, **fields)) == expected


def test_session_ids_are_deterministic_and_26_characters() -> None:
    sid = session_id_for("acme", "p1", "e1")
    assert sid == session_id_for("acme", "p1", "e1")
    assert len(sid) == 26 and sid.isalnum() and sid.upper() == sid
    assert sid != session_id_for("acme", "p2", "e1")
    assert sid != session_id_for("beta", "p1", "e1")


def test_enriched_messages_group_by_project_and_name_with_deterministic_ids() -> None:
    subjects = Subjects("tx")
    state = PartitionSessions()
    batch = [
        ev("a", 0 * M),
        ev("b", 1 * M, name="signup.done"),
        ev("c", 2 * M, name="signup_done"),  # same subject token as "signup.done"
        ev("d", 3 * M, project="beta"),
    ]
    result = sessionize_batch(state, batch, 41, lambda _: UTC_RULES)
    messages = build_messages(subjects, 41, result, max_payload=1024 * 1024)
    enriched = [m for m in messages if ".enriched." in m.subject]
    assert [(m.subject, m.msg_id.split(":")[:3]) for m in enriched] == [
        ("tx.enriched.v1.acme._pageview", ["41", "acme", "_pageview"]),
        ("tx.enriched.v1.acme.signup_done", ["41", "acme", "signup_done"]),
        ("tx.enriched.v1.acme.signup_done", ["41", "acme", "signup_done"]),
        ("tx.enriched.v1.beta._pageview", ["41", "beta", "_pageview"]),
    ]
    assert len({m.msg_id for m in messages}) == len(messages)
    names = [msgspec.json.decode(m.payload, type=EnrichedBatchV1).name for m in enriched]
    assert names == ["$pageview", "signup.done", "signup_done", "$pageview"]
    updates = [m for m in messages if ".sessions." in m.subject]
    assert [(m.subject, m.msg_id) for m in updates] == [
        ("tx.sessions.v1.acme", "41:acme"),
        ("tx.sessions.v1.beta", "41:beta"),
    ]
    decoded = msgspec.json.decode(updates[0].payload, type=SessionUpdateBatchV1)
    assert [s.events for s in decoded.sessions] == [3]
    # Rebuilding gives identical messages: what makes a replay a JetStream duplicate.
    assert build_messages(subjects, 41, result, max_payload=1024 * 1024) == messages


def test_enriched_messages_split_to_fit_the_server_payload_limit() -> None:
    state = PartitionSessions()
    batch = [ev(f"e{i:03d}", i * S, properties={"blob": "x" * 200}) for i in range(100)]
    result = sessionize_batch(state, batch, 7, lambda _: UTC_RULES)
    messages = build_messages(Subjects("tx"), 7, result, max_payload=4096 + 8000)
    enriched = [m for m in messages if ".enriched." in m.subject]
    assert len(enriched) > 1
    assert all(len(m.payload) <= 8000 for m in enriched)
    carried = [
        e.event_id
        for m in enriched
        for e in msgspec.json.decode(m.payload, type=EnrichedBatchV1).events
    ]
    assert carried == [e.event_id for e in result.events]
    assert [m.msg_id for m in enriched] == [f"7:acme:_pageview#{i}" for i in range(len(enriched))]


def test_raw_batches_without_time_zones_are_poison() -> None:
    good = (
        b'{"batch_id":"b","partition":0,"events":[{"event_id":"e","project_id":"acme",'
        b'"type":"track","name":"x","ts":"2026-01-15T12:00:00Z",'
        b'"received_at":"2026-01-15T12:00:01Z","distinct_id":"d"}]}'
    )
    assert decode_raw_batch(good).events[0].event_id == "e"
    with pytest.raises(InvalidRawBatch, match="time zone"):
        decode_raw_batch(good.replace(b"12:00:00Z", b"12:00:00"))
    with pytest.raises(InvalidRawBatch, match="undecodable"):
        decode_raw_batch(b"{not json")


@pytest.mark.parametrize(
    ("env", "ordinal", "owned"),
    [
        ({"STRATA_PARTITIONS": "8"}, 0, [0, 1, 2, 3, 4, 5, 6, 7]),
        ({"STRATA_REPLICAS": "3", "STRATA_ORDINAL": "1"}, 1, [1, 4, 7]),
        ({"STRATA_REPLICAS": "2", "STRATA_POD_NAME": "strata-sessionizer-1"}, 1, [1, 3, 5, 7]),
        ({"STRATA_REPLICAS": "2", "STRATA_POD_NAME": "laptop"}, 0, [0, 2, 4, 6]),
    ],
)
def test_partition_ownership(env: dict[str, str], ordinal: int, owned: list[int]) -> None:
    from libs.common.settings import from_env

    settings = from_env(SessionizerSettings, env)
    assert instance_ordinal(settings) == ordinal
    assert owned_partitions(settings) == owned


def test_an_ordinal_beyond_the_replicas_is_a_configuration_error() -> None:
    settings = SessionizerSettings(replicas=2, ordinal=2)
    with pytest.raises(SettingsError, match="below STRATA_REPLICAS=2"):
        owned_partitions(settings)


def stamped(events: list[EventV1], rules: SessionRules = UTC_RULES) -> dict[str, EventV1]:
    """event id -> the event as published, each event arriving as its own raw message."""
    state = PartitionSessions()
    out: dict[str, EventV1] = {}
    for seq, event in enumerate(events, start=1):
        for published in sessionize_batch(state, [event], seq, lambda _: rules).events:
            out[published.event_id] = published
    return out


GOOGLE = {
    "referrer": "https://www.google.com/",
    "referrer_domain": "google.com",
    "channel": "organic_search",
    "properties": {"$search_engine": "Google"},
}


def test_every_event_of_a_session_carries_its_source() -> None:
    events = stamped(
        [
            ev("a", 0 * M, url=SITE, **GOOGLE),
            ev("b", 1 * M, url=SITE + "p2", referrer=SITE),  # navigation inside the site
            ev("c", 2 * M, name="signup", url=SITE + "p2", properties={"plan": "pro"}),
            ev("d", 3 * M, url=SITE, channel="referral", referrer_domain="news.example"),
        ]
    )
    for event_id in "abcd":
        event = events[event_id]
        assert (event.channel, event.referrer_domain, event.referrer) == (
            "organic_search",
            "google.com",
            "https://www.google.com/",
        ), event_id
        assert event.properties.get("$search_engine") == "Google"
    assert events["c"].properties["plan"] == "pro"  # the event's own properties stay


def test_a_session_whose_first_page_view_brings_no_source_is_direct() -> None:
    # 40 minutes idle, then navigation inside the site: a new session, from no source.
    events = stamped(
        [
            ev("a", 0 * M, url=SITE, **GOOGLE),
            ev("b", 40 * M, url=SITE + "p2", referrer=SITE),
            ev("c", 41 * M, url=SITE + "p3", referrer=SITE + "p2"),
        ]
    )
    assert events["b"].session_id != events["a"].session_id
    assert [(events[i].channel, events[i].referrer_domain) for i in "bc"] == [
        ("direct", None),
        ("direct", None),
    ]


def test_a_late_earlier_event_with_a_source_becomes_the_sessions_source() -> None:
    events = stamped(
        [
            ev("b", 2 * M, url=SITE + "p2", referrer=SITE),
            ev("a", 1 * M, url=SITE, **GOOGLE),  # arrives late, happened first
            ev("c", 3 * M, url=SITE + "p3", referrer=SITE),
        ]
    )
    assert events["b"].channel == "direct"  # published before the source was known
    assert (events["a"].channel, events["c"].channel) == ("organic_search", "organic_search")


def test_server_side_events_join_an_open_session_and_never_start_one() -> None:
    server = {"name": "invoice_paid", "person": "u1"}
    events = stamped(
        [
            ev("s1", 0 * M, **server),  # no visit of u1's device is open: no session
            ev("p", 10 * M, person="u1", url=SITE, **GOOGLE),
            ev("s2", 15 * M, **server),  # joins the open visit, and carries its source
            ev("s3", 60 * M, **server),  # 45 minutes after the visit: none again
        ]
    )
    assert events["s1"].session_id is None and events["s3"].session_id is None
    assert events["s2"].session_id == events["p"].session_id
    assert events["s2"].channel == "organic_search"
    # A mobile app's event has a device: it starts a session as a visit would.
    app = stamped([ev("m", 0 * M, name="opened", os="iOS", device_type="mobile")])
    assert app["m"].session_id is not None


def test_a_checkpoint_of_an_older_release_is_still_read() -> None:
    """States are stored compressed now; one stored plain by an older release resumes the same."""
    _, state = sessionize_one_by_one([ev("a", 0 * M), ev("b", 10 * M, person="p2")], UTC_RULES)
    plain = msgspec.msgpack.encode(state)
    assert len(encode_state(state)) < len(plain)
    assert decode_state(plain) == decode_state(encode_state(state)) == state
