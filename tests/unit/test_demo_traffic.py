"""The demo traffic generator: deterministic for a seed, and realistic in the ways the demo
is meant to show (seasonality, acquisition, conversions, identities, bots, non-interactive)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec

from strata_dev.demo import DemoPlan, iter_backfill, iter_live, iter_messages, write_ndjson

END = datetime(2026, 3, 30, 15, 30, tzinfo=UTC)
PLAN = DemoPlan(days=130, visitors_per_day=40, seed=11, end=END)


def _all(plan: DemoPlan) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    return list(iter_messages(plan))


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    first = msgspec.json.encode(_all(PLAN))
    assert msgspec.json.encode(_all(PLAN)) == first
    other = msgspec.structs.replace(PLAN, seed=12)
    assert msgspec.json.encode(_all(other)) != first


def test_history_spans_every_day_and_never_passes_the_end() -> None:
    messages = _all(PLAN)
    days = {m["timestamp"][:10] for _, m in messages}
    first_day = END.date() - timedelta(days=PLAN.days - 1)
    assert min(days) == first_day.isoformat()
    assert max(days) == END.date().isoformat()
    assert len(days) == PLAN.days
    assert max(m["timestamp"] for _, m in messages) <= END.isoformat()[:19] + ".000Z"
    ids = [m["messageId"] for _, m in messages]
    assert len(ids) == len(set(ids))  # messageId is the idempotency key: unique


def test_weekdays_busier_than_weekends_on_a_business_site() -> None:
    per_weekday: Counter[int] = Counter()
    for project, message in _all(PLAN):
        if project == "demo" and message["type"] == "page":
            per_weekday[date.fromisoformat(message["timestamp"][:10]).weekday()] += 1
    weekday_mean = sum(per_weekday[d] for d in range(5)) / 5
    weekend_mean = (per_weekday[5] + per_weekday[6]) / 2
    assert weekend_mean < 0.8 * weekday_mean


def test_traffic_has_the_things_analytics_users_look_at() -> None:
    messages = _all(PLAN)
    projects = Counter(project for project, _ in messages)
    assert set(projects) == {"demo", "shop", "docs"}

    tracks = Counter(m["event"] for _, m in messages if m["type"] == "track")
    for name in ("signup", "add_to_cart", "purchase", "search", "scroll_depth"):
        assert tracks[name] > 0, name
    purchases = [m for _, m in messages if m.get("event") == "purchase"]
    assert all(m["properties"]["revenue"] > 0 for m in purchases)

    # Web vitals for the performance report, and an A/B test's exposures for experiments.
    vitals = [m["properties"] for _, m in messages if m.get("event") == "$web_vitals"]
    assert vitals and all(
        v["lcp"] >= v["fcp"] >= v["ttfb"] > 0 and 0 <= v["cls"] < 5 for v in vitals
    )
    exposures = [m for _, m in messages if m.get("event") == "$experiment_exposure"]
    variants: dict[str, set[str]] = {}
    for m in exposures:
        assert m["properties"]["experiment"] == "new-checkout"
        variants.setdefault(m["anonymousId"], set()).add(m["properties"]["variant"])
    assert all(len(v) == 1 for v in variants.values())  # a visitor keeps their variant
    assert {v for vs in variants.values() for v in vs} == {"control", "treatment"}

    # Non-interactive events are flagged the way analytics.js users flag them.
    assert all(
        m["properties"]["nonInteraction"] == 1
        for _, m in messages
        if m.get("event") == "scroll_depth"
    )

    # Acquisition: search and social referrers, campaigns with UTM tags, direct visits.
    pages = [m for _, m in messages if m["type"] == "page"]
    referrers = {m["properties"].get("referrer", "") for m in pages}
    assert any("google.com" in r for r in referrers) and any("t.co" in r for r in referrers)
    campaigns = {m["context"]["campaign"]["source"] for m in pages if "campaign" in m["context"]}
    assert {"newsletter", "google"} <= campaigns
    assert any("utm_source=newsletter" in m["properties"]["url"] for m in pages)

    # Devices: desktop and mobile browsers by real user agents, and some crawlers.
    agents = {m["context"]["userAgent"] for m in pages}
    assert any("iPhone" in a for a in agents) and any("Windows NT" in a for a in agents)
    assert any("Googlebot" in a or "bingbot" in a or "AhrefsBot" in a for a in agents)


def test_identify_links_the_anonymous_visitor_to_a_user_from_then_on() -> None:
    messages = [m for _, m in _all(PLAN)]
    identifies = [m for m in messages if m["type"] == "identify"]
    assert identifies
    linked = {m["anonymousId"]: m["userId"] for m in identifies}
    for message in messages:
        anonymous = message["anonymousId"]
        if anonymous in linked and message["timestamp"] > max(
            i["timestamp"] for i in identifies if i["anonymousId"] == anonymous
        ):
            assert message.get("userId") == linked[anonymous]
    # Returning visitors: some anonymous ids have sessions on several days.
    days_seen: dict[str, set[str]] = {}
    for message in messages:
        days_seen.setdefault(message["anonymousId"], set()).add(message["timestamp"][:10])
    assert sum(1 for d in days_seen.values() if len(d) > 1) > 50


def test_batches_hold_whole_sessions_of_one_project() -> None:
    batches = list(iter_backfill(DemoPlan(days=5, visitors_per_day=60, seed=3, end=END), 50))
    for batch in batches:
        sessions = len({m["anonymousId"] for m in batch.messages})
        # Over the size only when one session alone is longer than a batch.
        assert len(batch.messages) <= 50 or sessions == 1
        # A batch starts with a session's landing page: sessions are never split.
        assert batch.messages[0]["type"] == "page"


def test_ndjson_output_round_trips(tmp_path: Path) -> None:
    plan = DemoPlan(days=3, visitors_per_day=20, seed=5, end=END)
    path = tmp_path / "demo.ndjson"
    count = write_ndjson(plan, str(path))
    lines = [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]
    assert sum(len(line["batch"]) for line in lines) == count == len(_all(plan))
    assert {line["project"] for line in lines} == {"demo", "shop", "docs"}


async def test_live_traffic_sends_each_event_when_its_time_comes() -> None:
    readings: list[float] = []

    def clock() -> float:  # every reading is five seconds later
        readings.append(1_800_000_000.0 + 5.0 * len(readings))
        return readings[-1]

    batches = []
    live = iter_live(("demo", "shop"), sessions_per_minute=120, seed=1, clock=clock, tick_s=0)
    async for batch in live:
        # Nothing is sent before its time: the newest timestamp is not after the clock.
        newest = max(m["timestamp"] for m in batch.messages)
        assert newest <= datetime.fromtimestamp(readings[-1], UTC).isoformat()[:19] + ".999Z"
        batches.append(batch)
        if sum(len(b.messages) for b in batches) > 400:
            break
    await live.aclose()

    messages = [m for b in batches for m in b.messages]
    assert len({m["messageId"] for m in messages}) == len(messages)
    assert {b.project for b in batches} == {"demo", "shop"}
    # A visit's pages arrive over time, in several sends, not all at once.
    sends_per_visitor: Counter[str] = Counter()
    for batch in batches:
        for visitor in {m["anonymousId"] for m in batch.messages}:
            sends_per_visitor[visitor] += 1
    assert max(sends_per_visitor.values()) > 1
