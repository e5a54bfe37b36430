"""A plain-Python reference of the analyses, written from the semantics in docs/analytics.md
independently of the SQL engines: per person (or session), loops over sorted
events, one attempt at a time. Slow and obvious on purpose; the engines must agree with it."""

from __future__ import annotations

import bisect
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.support.analysis_events import Ev

NONE = "(none)"
COLUMNS = ("name", "path", "session_id", "country")
NON_ACTIONS = ("$identify", "$alias", "$group")


# ---------------------------------------------------------------------------------------------
# Properties and conditions


def _text(value: Any) -> str | None:
    """A JSON value as text, the way DuckDB's json_extract_string renders it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def property_text(ev: Ev, name: str, traits: dict[str, dict[str, Any]]) -> str | None:
    if name in COLUMNS:
        value = getattr(ev, name)
        return None if value is None else str(value)
    if name.startswith("person."):
        source: Any = traits.get(ev.person, {})
        keys = name[len("person.") :].split(".")
    elif name.startswith("properties."):
        source, keys = ev.properties, name[len("properties.") :].split(".")
    else:
        source, keys = ev.properties, [name]
    for key in keys:
        if not isinstance(source, dict) or key not in source:
            return None
        source = source[key]
    return _text(source)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _equals(text: str | None, value: Any) -> bool:
    if text is None:
        return False
    if isinstance(value, bool):
        return text.lower() == ("true" if value else "false")
    if isinstance(value, int | float):
        return _number(text) == float(value)
    return bool(text == value)


def selector_holds(selector: str, chain: str) -> bool:
    """The selector rule written plainly: compound parts matched right to left up the chain."""
    tokens = selector.replace(">", " > ").split()
    elements = chain.split(" > ")

    def part_holds(part: str, element: str) -> bool:
        name = element.split("#")[0].split(".")[0]
        element_id = element.split("#")[1].split(".")[0] if "#" in element else None
        classes = set(element.split(".")[1:])
        tag = re.match(r"[A-Za-z*][A-Za-z0-9-]*", part)
        if tag and tag.group() not in ("*", name):
            return False
        ids = re.findall(r"#([A-Za-z0-9_-]+)", part)
        wanted = set(re.findall(r"\.([A-Za-z0-9_-]+)", part))
        return (not ids or ids[0] == element_id) and wanted <= classes

    def holds_from(t: int, e: int) -> bool:  # tokens[:t+1] against elements[:e+1], t at e
        if not part_holds(tokens[t], elements[e]):
            return False
        if t == 0:
            return True
        if tokens[t - 1] == ">":
            return e > 0 and holds_from(t - 2, e - 1)
        return any(holds_from(t - 1, up) for up in range(e))

    return holds_from(len(tokens) - 1, len(elements) - 1)


def condition_holds(ev: Ev, cond: Any, traits: dict[str, dict[str, Any]]) -> bool:
    name = "$elements" if cond.property == "element" else cond.property
    text = property_text(ev, name, traits)
    op, value = cond.operator, cond.value
    if op == "selector":
        return text is not None and selector_holds(value, text)
    if op == "is_set":
        return text is not None
    if op == "is_not_set":
        return text is None
    values = value if isinstance(value, list) else [value]
    if op == "eq":
        return any(_equals(text, v) for v in values)
    if op == "neq":
        return not any(_equals(text, v) for v in values)
    if op in ("gt", "gte", "lt", "lte"):
        number = _number(text)
        if number is None:
            return False
        return bool(
            {
                "gt": number > value,
                "gte": number >= value,
                "lt": number < value,
                "lte": number <= value,
            }[op]
        )
    if op in ("contains", "not_contains"):
        found = text is not None and value.lower() in text.lower()
        return found if op == "contains" else not found
    found = text is not None and re.search(value, text) is not None
    return found if op == "regex" else not found


def matches(ev: Ev, match: Any, traits: dict[str, dict[str, Any]]) -> bool:
    # "$any" is every action: any event but the identity bookkeeping calls.
    named = ev.name not in NON_ACTIONS if match.event == "$any" else ev.name == match.event
    return named and all(condition_holds(ev, c, traits) for c in match.conditions)


def same_step(a: Any, b: Any) -> bool:
    def key(m: Any) -> list[str]:
        return sorted(
            json.dumps([c.property, c.operator, c.value], sort_keys=True) for c in m.conditions
        )

    return bool(a.event == b.event and key(a) == key(b))


def _us(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=ts.tzinfo)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ---------------------------------------------------------------------------------------------
# Funnels


@dataclass
class RefFunnel:
    """Per step (0-based): (persons, median, mean of seconds from the previous step)."""

    total: list[tuple[int, float | None, float | None]]
    breakdown: dict[str, list[tuple[int, float | None, float | None]]]
    reached: dict[str, int]  # person -> furthest step of the best attempt
    # person -> seconds from the first to the last step, for those who reached the last
    conversion_s: dict[str, float]


def _step_stats(best: dict[str, tuple[int, list[int], str]], n: int) -> list[Any]:
    out: list[tuple[int, float | None, float | None]] = []
    for k in range(n):
        members = [b for b in best.values() if b[0] >= k + 1]
        if k == 0:
            out.append((len(members), None, None))
            continue
        gaps = [(b[1][k] - b[1][k - 1]) / 1e6 for b in members]
        out.append(
            (
                len(members),
                statistics.median(gaps) if gaps else None,
                statistics.fmean(gaps) if gaps else None,
            )
        )
    return out


def ref_funnel(
    events: Sequence[Ev],
    steps: Sequence[Any],
    *,
    order: str,
    window_s: int,
    start: datetime,
    end: datetime,
    exclusions: Sequence[tuple[Any, int, int]] = (),
    breakdown: str | None = None,
    traits: dict[str, dict[str, Any]] | None = None,
    floors: dict[str, datetime] | None = None,
) -> RefFunnel:
    """Attempts start at first-step events in [start, end) (and not before the person's
    `floors` time when given); rows are read from [start, end + window)."""
    traits = traits or {}
    n = len(steps)
    window_us = window_s * 1_000_000
    scope_end = end + timedelta(seconds=window_s)
    in_scope = [ev for ev in events if start <= ev.ts < scope_end and not ev.is_bot]
    by_person: dict[str, list[Ev]] = defaultdict(list)
    for ev in in_scope:
        by_person[ev.person].append(ev)
    best: dict[str, tuple[int, list[int], str]] = {}
    for person, evs in by_person.items():
        sat = {id(ev): [matches(ev, s, traits) for s in steps] for ev in evs}

        def rank(ev: Ev, sat: dict[int, list[bool]] = sat) -> int:
            flags = sat[id(ev)]
            return next((k + 1 for k in range(n) if flags[k]), n + 1)

        if order == "strict":
            seq = [ev for ev in evs if not ev.non_interactive and ev.name not in NON_ACTIONS]
        else:
            seq = [ev for ev in evs if any(sat[id(ev)])]
        seq.sort(key=lambda ev: (ev.ts, rank(ev), ev.event_id))
        floor = (floors or {}).get(person)
        attempts: list[tuple[int, int, list[int], str, bool]] = []
        if order == "unordered":
            seen_ts: set[datetime] = set()
            for g0, ev in enumerate(seq):
                if ev.ts in seen_ts or not start <= ev.ts < end:
                    continue
                if floor is not None and ev.ts < floor:
                    continue
                seen_ts.add(ev.ts)
                deadline = _us(ev.ts) + window_us
                credited: dict[int, int] = {}
                for k in range(n):
                    same = [j for j in range(k) if same_step(steps[j], steps[k]) and j in credited]
                    after = seq[credited[max(same)]].ts if same else None
                    for j in range(g0, len(seq)):
                        cand = seq[j]
                        if not sat[id(cand)][k] or j in credited.values():
                            continue
                        if after is not None and cand.ts <= after:
                            continue
                        if _us(cand.ts) <= deadline:
                            credited[k] = j
                        break
                times = sorted(_us(seq[j].ts) for j in credited.values())
                bd = _breakdown_value(seq[g0], breakdown, traits)
                attempts.append((len(credited), g0, times, bd, False))
        else:
            for i, ev in enumerate(seq):
                if not sat[id(ev)][0] or not start <= ev.ts < end:
                    continue
                if floor is not None and ev.ts < floor:
                    continue
                deadline = _us(ev.ts) + window_us
                chain = [i]
                for k in range(1, n):
                    prev = seq[chain[-1]]
                    strictly_later = same_step(steps[k], steps[k - 1])
                    found = None
                    candidates = (
                        [chain[-1] + 1] if order == "strict" else range(chain[-1] + 1, len(seq))
                    )
                    for j in candidates:
                        if j >= len(seq):
                            break
                        cand = seq[j]
                        if _us(cand.ts) > deadline:
                            break
                        ok = sat[id(cand)][k] and not (strictly_later and cand.ts <= prev.ts)
                        if ok:
                            found = j
                            break
                    if found is None:
                        break
                    chain.append(found)
                times = [_us(seq[j].ts) for j in chain]
                excluded = False
                for match, a, b in exclusions:
                    if len(chain) < a:
                        continue
                    lo = times[a - 1]
                    hi = times[b - 1] if len(chain) >= b else None
                    for x in evs:
                        if not matches(x, match, traits):
                            continue
                        t = _us(x.ts)
                        if lo < t and (t < hi if hi is not None else t <= deadline):
                            excluded = True
                bd = _breakdown_value(ev, breakdown, traits)
                attempts.append((len(chain), i, times, bd, excluded))
        if not attempts or any(a[4] for a in attempts):
            continue
        furthest, _, times, value, _ = min(attempts, key=lambda a: (-a[0], a[1]))
        best[person] = (furthest, times, value)
    by_value: dict[str, dict[str, tuple[int, list[int], str]]] = defaultdict(dict)
    for person, chosen in best.items():
        by_value[chosen[2]][person] = chosen
    return RefFunnel(
        total=_step_stats(best, n),
        breakdown={v: _step_stats(members, n) for v, members in by_value.items()},
        reached={p: chosen[0] for p, chosen in best.items()},
        conversion_s={
            p: (chosen[1][n - 1] - chosen[1][0]) / 1e6
            for p, chosen in best.items()
            if chosen[0] == n
        },
    )


def _breakdown_value(ev: Ev, breakdown: str | None, traits: dict[str, dict[str, Any]]) -> str:
    if breakdown is None:
        return ""
    text = property_text(ev, breakdown, traits)
    return NONE if text is None or text == "" else text


# ---------------------------------------------------------------------------------------------
# Retention


def _period_start(day: date, period: str, week_start: str) -> date:
    if period == "day":
        return day
    if period == "week":
        first = 0 if week_start == "monday" else 6
        while day.weekday() != first:
            day -= timedelta(days=1)
        return day
    return date(day.year, day.month, 1)


def _period_after(day: date, period: str) -> date:
    if period == "day":
        return day + timedelta(days=1)
    if period == "week":
        return day + timedelta(days=7)
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def ref_retention(
    events: Sequence[Ev],
    start_event: Any,
    return_event: Any,
    *,
    period: str,
    intervals: int,
    week_start: str,
    mode: str,
    cumulative: bool,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    now: datetime,
) -> list[tuple[Any, int, list[int | None]]]:
    """(cohort period's first local date, or its UTC start for hours, size, counts per offset
    0..intervals)."""
    days: list[Any]
    if period == "hour":
        # Hours are absolute: from the local hour holding `start`, one hour after another.
        hour = start.astimezone(tz).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        days = [hour]
        while days[-1] + timedelta(hours=1) < end:
            days.append(days[-1] + timedelta(hours=1))
        n_cohorts = len(days)
        days += [days[-1] + timedelta(hours=k) for k in range(1, intervals + 2)]
        bounds = list(days)
    else:
        first = _period_start(start.astimezone(tz).date(), period, week_start)
        last = _period_start(
            (end - timedelta(microseconds=1)).astimezone(tz).date(), period, week_start
        )
        days = [first]
        while days[-1] < last:
            days.append(_period_after(days[-1], period))
        n_cohorts = len(days)
        for _ in range(intervals + 1):
            days.append(_period_after(days[-1], period))
        bounds = [datetime.combine(d, time(0), tzinfo=tz) for d in days]

    def index(ts: datetime) -> int | None:
        i = bisect.bisect_right(bounds, ts) - 1
        return i if 0 <= i < len(bounds) - 1 else None

    live = [ev for ev in events if not ev.is_bot]
    members: dict[int, set[str]] = defaultdict(set)
    if mode == "recurring":
        for ev in live:
            i = index(ev.ts)
            if matches(ev, start_event, {}) and i is not None and i < n_cohorts:
                members[i].add(ev.person)
    else:
        first_seen: dict[str, datetime] = {}
        for ev in live:
            if matches(ev, start_event, {}) and (
                ev.person not in first_seen or ev.ts < first_seen[ev.person]
            ):
                first_seen[ev.person] = ev.ts
        for person, ts in first_seen.items():
            i = index(ts)
            if i is not None and i < n_cohorts and ts >= bounds[0]:
                members[i].add(person)
    returned: dict[str, set[int]] = defaultdict(set)
    for ev in live:
        i = index(ev.ts)
        if matches(ev, return_event, {}) and i is not None:
            returned[ev.person].add(i)
    rows = []
    for c in range(n_cohorts):
        cohort = members.get(c, set())
        counts: list[int | None] = [len(cohort) if bounds[c] <= now else None]
        for k in range(1, intervals + 1):
            if bounds[c + k] > now:
                counts.append(None)
                continue
            wanted = range(c + k, c + intervals + 1) if cumulative else [c + k]
            counts.append(sum(1 for p in cohort if any(w in returned[p] for w in wanted)))
        rows.append((days[c], len(cohort), counts))
    return rows


# ---------------------------------------------------------------------------------------------
# Paths


def _strip(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped or "/"


def _page_label(path: str, rules: Sequence[tuple[str, str]]) -> str:
    label = _strip(path)
    for pattern, replacement in rules:
        label = re.sub(pattern, replacement, label)
    return _strip(label) if rules else label


def ref_paths(
    events: Sequence[Ev],
    *,
    event_types: Sequence[str],
    steps: int,
    start: datetime,
    end: datetime,
    session_max: timedelta,
    start_point: str | None = None,
    end_point: str | None = None,
    rules: Sequence[tuple[str, str]] = (),
    per: str = "session",
) -> tuple[dict[tuple[int, str], tuple[int, int]], dict[tuple[int, str, str], int], int]:
    """({(step, node): (paths, drop-offs)}, {(step, source, target): paths}, paths): a path
    per session, or with `per="person"` per person over their events of [start, end)."""
    # A page path given as a start or end point is normalised like the labels.
    if start_point is not None and start_point.startswith("/"):
        start_point = _page_label(start_point, rules)
    if end_point is not None and end_point.startswith("/"):
        end_point = _page_label(end_point, rules)
    sessions: dict[str, list[Ev]] = defaultdict(list)
    for ev in events:
        if ev.is_bot or ev.non_interactive:
            continue
        if per == "person":
            if not start <= ev.ts < end:
                continue
            key = ev.person
        else:
            if ev.session_id is None or not start - session_max <= ev.ts < end + session_max:
                continue
            key = ev.session_id
        is_page = ev.name == "$pageview"
        is_custom = not ev.name.startswith("$")
        if (is_page and "pageview" in event_types) or (is_custom and "custom" in event_types):
            sessions[key].append(ev)
    nodes: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    edges: dict[tuple[int, str, str], int] = defaultdict(int)
    counted = 0
    for evs in sessions.values():
        evs.sort(key=lambda ev: (ev.ts, ev.event_id))
        if not start <= evs[0].ts < end:
            continue
        labels: list[str] = []
        for ev in evs:
            if ev.name == "$pageview":
                label = _page_label(ev.path, rules) if ev.path else NONE
            else:
                label = ev.name
            if not labels or labels[-1] != label:
                labels.append(label)
        lo = 0
        if start_point is not None:
            if start_point not in labels:
                continue
            lo = labels.index(start_point)
        if end_point is not None:
            if end_point not in labels[lo:]:
                continue
            hi = labels.index(end_point, lo)
            if start_point is None:
                lo = max(0, hi - steps + 1)
            hi = min(hi, lo + steps - 1)
        else:
            hi = min(len(labels) - 1, lo + steps - 1)
        path = labels[lo : hi + 1]
        counted += 1
        for i, label in enumerate(path):
            node = nodes[(i + 1, label)]
            node[0] += 1
            if end_point is None and lo + i == len(labels) - 1:
                node[1] += 1
            if i + 1 < len(path):
                edges[(i + 1, label, path[i + 1])] += 1
    return {k: (v[0], v[1]) for k, v in nodes.items()}, dict(edges), counted
