"""Session assignment for one person partition: pure and deterministic, no I/O.

Given the same state and the same raw batches in the same order, `sessionize_batch` returns the
same session ids, so a replay from a checkpoint republishes identical messages (which JetStream's
dedup window then drops). The rules are documented for users in docs/sessions.md:

- an event continues a person's session while the gap to the session is <= the timeout
  (30:00 continues, 30:01 starts a new session);
- a session never spans `max_s` or more: an event at or past start + max_s starts a new one;
- optional: a session never spans a local midnight of the project's time zone;
- optional: an interactive event whose campaign (UTM source/medium/campaign, else an external
  referrer site) differs from the session's campaign starts a new session;
- non-interactive events extend a session but never count as interactive (bounce) and never
  split or set its campaign;
- a late event joins the nearest of the person's recent sessions whose
  [start - timeout, end + timeout] contains it (ties go to the earlier session); sessions are
  never merged, since their ids are already published;
- a session's id is fixed when it is created: a hash of project, distinct id and the id of the
  event that created it;
- every event carries its session's traffic source (referrer, channel, UTM tags, click id):
  the source of the session's earliest event that says how the visit arrived, `direct` when
  its first page view says nothing (internal navigation after a timeout);
- a server-side event (no page, no device) never starts a session: it joins an open one of
  its device or stays without a session.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import msgspec

from libs.common.schemas.events_v1 import EventV1, SessionUpdateV1

US_PER_S = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

# Recent sessions kept per person for late events; the least recently touched goes first.
MAX_SESSIONS_PER_PERSON = 8
# Prune points are derived from the messages themselves (receipt clock, message count), never
# from the wall clock, so a replay prunes at the same points and assigns the same sessions.
PRUNE_EVERY_RECEIVED_US = 60 * US_PER_S
PRUNE_EVERY_MESSAGES = 10_000

_TO_CROCKFORD = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)


class SessionRules(msgspec.Struct, frozen=True, kw_only=True):
    """A project's session settings (the `projects` table's session columns)."""

    timeout_s: int = 1800
    max_s: int = 86400
    split_midnight: bool = False
    split_campaign: bool = False
    timezone: str = "UTC"


DEFAULT_RULES = SessionRules()


# Event properties that belong to the traffic source (set by ingest's enrichment).
SOURCE_PROPERTIES = ("$search_engine", "$social_network", "$click_id")
DIRECT = "direct"


class TrafficSource(msgspec.Struct, array_like=True, frozen=True):
    """How a session's visit arrived, stamped on each of its events."""

    referrer: str | None = None
    referrer_domain: str | None = None
    channel: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    search_engine: str | None = None
    social_network: str | None = None
    click_id: str | None = None

    @classmethod
    def of(cls, event: EventV1) -> TrafficSource:
        properties = event.properties
        return cls(
            referrer=event.referrer,
            referrer_domain=event.referrer_domain,
            channel=event.channel,
            utm_source=event.utm_source,
            utm_medium=event.utm_medium,
            utm_campaign=event.utm_campaign,
            utm_term=event.utm_term,
            utm_content=event.utm_content,
            search_engine=properties.get("$search_engine"),
            social_network=properties.get("$social_network"),
            click_id=properties.get("$click_id"),
        )

    def carried_by(self, event: EventV1) -> bool:
        """Whether `event` already carries this source (`TrafficSource.of(event) == self`,
        without building a TrafficSource per event)."""
        if (
            event.channel != self.channel
            or event.referrer_domain != self.referrer_domain
            or event.referrer != self.referrer
            or event.utm_source != self.utm_source
            or event.utm_medium != self.utm_medium
            or event.utm_campaign != self.utm_campaign
            or event.utm_term != self.utm_term
            or event.utm_content != self.utm_content
        ):
            return False
        properties = event.properties
        if not properties:
            return (
                self.search_engine is None
                and self.social_network is None
                and (self.click_id is None)
            )
        return (
            properties.get("$search_engine") == self.search_engine
            and properties.get("$social_network") == self.social_network
            and properties.get("$click_id") == self.click_id
        )

    def stamped(self, event: EventV1, session_id: str) -> EventV1:
        """`event` in session `session_id`, carrying this source: one copy of the event (it
        was copied twice, once per change)."""
        if self.carried_by(event):
            return msgspec.structs.replace(event, session_id=session_id)
        return self.restamped(event, session_id)

    def restamped(self, event: EventV1, session_id: str) -> EventV1:
        """`stamped` for an event known not to carry this source."""
        properties = event.properties
        if (
            self.search_engine is not None
            or self.social_network is not None
            or self.click_id is not None
            or "$search_engine" in properties
            or "$social_network" in properties
            or "$click_id" in properties
        ):
            properties = {k: v for k, v in properties.items() if k not in SOURCE_PROPERTIES}
            for key, value in zip(
                SOURCE_PROPERTIES,
                (self.search_engine, self.social_network, self.click_id),
                strict=True,
            ):
                if value is not None:
                    properties[key] = value
        # Else the properties stay as they are (shared: events are never changed in place).
        return msgspec.structs.replace(
            event,
            referrer=self.referrer,
            referrer_domain=self.referrer_domain,
            channel=self.channel,
            utm_source=self.utm_source,
            utm_medium=self.utm_medium,
            utm_campaign=self.utm_campaign,
            utm_term=self.utm_term,
            utm_content=self.utm_content,
            properties=properties,
            session_id=session_id,
        )


DIRECT_SOURCE = TrafficSource(channel=DIRECT)


def is_server_side(event: EventV1) -> bool:
    """An event from a backend: not a page or screen view, no page, nothing about a device (a
    server SDK's call; browsers and apps send their page or device with every call)."""
    return (
        event.type not in ("page", "screen")
        and event.url is None
        and event.path is None
        and event.browser is None
        and event.os is None
        and event.device_type is None
    )


class SessionWindow(msgspec.Struct, array_like=True):
    """One session of a person as far as the sessionizer has seen it. Times are microseconds
    since the Unix epoch (integers, so boundaries such as exactly 30:00 compare exactly)."""

    session_id: str
    start_us: int
    end_us: int
    events: int
    interactive_events: int
    touched_seq: int  # raw stream sequence that last touched it (eviction order)
    campaign: str | None = None
    user_id: str | None = None
    entry_path: str | None = None
    entry_us: int = 0  # time of the event `entry_path` came from
    channel: str | None = None
    referrer_domain: str | None = None
    source_us: int = 0  # time of the event `channel`/`referrer_domain` came from
    # The session's traffic source stamped on its events (None until an event brings one),
    # and the (time, event id) of the event it came from.
    source: TrafficSource | None = None
    source_event_id: str = ""


class PersonSessions(msgspec.Struct, array_like=True):
    """A person's recent sessions (at most MAX_SESSIONS_PER_PERSON)."""

    sessions: list[SessionWindow]
    last_event_us: int
    last_received_us: int


class PartitionSessions(msgspec.Struct, kw_only=True):
    """The whole sessionizer state of one raw-stream partition (checkpointed as msgpack)."""

    persons: dict[str, dict[str, PersonSessions]] = {}  # project_id -> distinct_id -> person
    # The partition's event-time clock: the latest min(ts, received_at) seen, so one event
    # with a skewed future timestamp cannot age everyone else out.
    event_clock_us: int = 0
    received_clock_us: int = 0
    last_prune_received_us: int = 0
    messages_since_prune: int = 0

    def person_count(self) -> int:
        return sum(len(people) for people in self.persons.values())

    def assign(
        self, event: EventV1, rules: SessionRules, seq: int
    ) -> tuple[SessionWindow | None, bool]:
        """Place `event` in a session of its person; returns the session (None for a
        server-side event with no open session to join) and whether it is new."""
        # Plain comparisons, not max()/min() calls: this runs for every event.
        t = (event.ts - EPOCH) // _ONE_US
        received = (event.received_at - EPOCH) // _ONE_US
        seen = t if t < received else received
        if seen > self.event_clock_us:
            self.event_clock_us = seen
        if received > self.received_clock_us:
            self.received_clock_us = received

        server_side = is_server_side(event)
        people = self.persons.get(event.project_id)
        person = people.get(event.distinct_id) if people is not None else None
        if person is None and server_side:
            return None, False  # no visit of this device to join: nothing to remember
        if people is None:
            people = self.persons[event.project_id] = {}
        if person is None:
            person = people[event.distinct_id] = PersonSessions([], t, received)
        if t > person.last_event_us:
            person.last_event_us = t
        if received > person.last_received_us:
            person.last_received_us = received

        campaign = (
            campaign_of(event) if rules.split_campaign and not event.non_interactive else None
        )
        session = _joinable_session(person.sessions, t, campaign, rules)
        is_new = session is None
        if session is None and server_side:
            return None, False  # a backend call never starts a visit
        if session is None:
            session = SessionWindow(
                session_id=session_id_for(event.project_id, event.distinct_id, event.event_id),
                start_us=t,
                end_us=t,
                events=0,
                interactive_events=0,
                touched_seq=seq,
            )
            person.sessions.append(session)
            if len(person.sessions) > MAX_SESSIONS_PER_PERSON:
                oldest = min(person.sessions, key=lambda s: (s.touched_seq, s.end_us))
                person.sessions.remove(oldest)
        _extend(session, event, t, campaign, seq)
        return session, is_new

    def prune(
        self,
        rules_for: Callable[[str], SessionRules],
        changed: set[tuple[str, str]] | None = None,
    ) -> int:
        """Forget persons no in-window event can reach any more; returns how many (and adds
        their (project_id, distinct_id) to `changed`, when given).

        A person goes when their last event is older than the partition's event clock minus
        (max_s + timeout) AND nothing of theirs arrived for a timeout of receipt time (so a
        person whose old history is being backfilled right now keeps their sessions).
        """
        removed = 0
        for project_id in list(self.persons):
            rules = rules_for(project_id)
            timeout_us = rules.timeout_s * US_PER_S
            event_horizon = self.event_clock_us - rules.max_s * US_PER_S - timeout_us
            received_horizon = self.received_clock_us - timeout_us
            people = self.persons[project_id]
            stale = [
                distinct_id
                for distinct_id, person in people.items()
                if person.last_event_us < event_horizon
                and person.last_received_us < received_horizon
            ]
            for distinct_id in stale:
                del people[distinct_id]
                if changed is not None:
                    changed.add((project_id, distinct_id))
            removed += len(stale)
            if not people:
                del self.persons[project_id]
        self.last_prune_received_us = self.received_clock_us
        self.messages_since_prune = 0
        return removed

    def prune_due(self) -> bool:
        """Whether the messages processed since the last prune call for one (deterministic)."""
        return (
            self.messages_since_prune >= PRUNE_EVERY_MESSAGES
            or self.received_clock_us - self.last_prune_received_us >= PRUNE_EVERY_RECEIVED_US
        )


class TouchedSession(msgspec.Struct, frozen=True):
    project_id: str
    distinct_id: str
    window: SessionWindow


class SessionizedBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The result of sessionizing one raw batch."""

    events: list[EventV1]  # in event-time order, each with its session_id set
    touched: list[TouchedSession]  # each session the batch touched, once, in first-touch order
    sessions_started: int
    persons_pruned: int


def sessionize_batch(
    state: PartitionSessions,
    events: list[EventV1],
    seq: int,
    rules_for: Callable[[str], SessionRules],
    changed: set[tuple[str, str]] | None = None,
) -> SessionizedBatch:
    """Assign every event of one raw message (stream sequence `seq`) a session, in event-time
    order (a stable sort, so equal timestamps keep the client's order).

    `changed`, when given, receives the (project_id, distinct_id) of every person whose
    state the batch may have changed or removed (an incremental checkpoint stores those).
    """
    ordered = sorted(events, key=_event_time)
    out: list[EventV1] = []
    touched: dict[tuple[str, str], TouchedSession] = {}
    started = 0
    # A batch names few projects: look each one's rules up once, not once per event.
    batch_rules: dict[str, SessionRules] = {}
    for event in ordered:
        rules = batch_rules.get(event.project_id)
        if rules is None:
            rules = batch_rules[event.project_id] = rules_for(event.project_id)
        window, is_new = state.assign(event, rules, seq)
        if changed is not None:
            # Every event's person, even one that ends up unchanged or absent (a server-side
            # event of nobody): a person stored as absent costs the checkpoint a few bytes.
            changed.add((event.project_id, event.distinct_id))
        if window is None:
            out.append(event)  # stored without a session
            continue
        started += is_new
        key = (event.project_id, window.session_id)
        if key not in touched:
            touched[key] = TouchedSession(event.project_id, event.distinct_id, window)
        source = window.source
        if source is None or source.carried_by(event):
            out.append(msgspec.structs.replace(event, session_id=window.session_id))
        else:
            out.append(source.restamped(event, window.session_id))
    state.messages_since_prune += 1
    pruned = state.prune(rules_for, changed) if state.prune_due() else 0
    return SessionizedBatch(
        events=out,
        touched=list(touched.values()),
        sessions_started=started,
        persons_pruned=pruned,
    )


def session_update(touched: TouchedSession) -> SessionUpdateV1:
    """The public session-update record of a session after a batch."""
    w = touched.window
    return SessionUpdateV1(
        project_id=touched.project_id,
        session_id=w.session_id,
        distinct_id=touched.distinct_id,
        user_id=w.user_id,
        start=from_us(w.start_us),
        end=from_us(w.end_us),
        events=w.events,
        interactive_events=w.interactive_events,
        entry_path=w.entry_path,
        channel=w.channel,
        referrer_domain=w.referrer_domain,
    )


def session_id_for(project_id: str, distinct_id: str, first_event_id: str) -> str:
    """A session's id: 26 Crockford base32 characters of a hash of who and which event began it,
    so the same session gets the same id on every replay."""
    digest = hashlib.blake2b(
        f"{project_id}\x1f{distinct_id}\x1f{first_event_id}".encode(), digest_size=16
    ).digest()
    # 128 bits -> 26 base32 characters (the last carries 3 bits), in Crockford's alphabet.
    return base64.b32encode(digest)[:26].decode().translate(_TO_CROCKFORD)


def campaign_of(event: EventV1) -> str | None:
    """The traffic source an event brings, or None when it brings none (direct or internal):
    its UTM source/medium/campaign, else the site of an external referrer."""
    if event.utm_source or event.utm_medium or event.utm_campaign:
        return f"utm:{event.utm_source or ''}|{event.utm_medium or ''}|{event.utm_campaign or ''}"
    if event.referrer_domain:
        referrer_site = _site(event.referrer_domain)
        page_host = urlsplit(event.url).hostname if event.url else None
        if referrer_site and not (page_host and _same_site(referrer_site, _site(page_host))):
            return f"ref:{referrer_site}"
    return None


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of a tz-aware datetime."""
    return (ts - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    # Positional, not microseconds=us: the keyword form costs twice as much per call.
    return EPOCH + timedelta(0, 0, us)


def local_day(us: int, timezone: str) -> int:
    """The proleptic ordinal of the calendar day `us` falls on in `timezone`."""
    return from_us(us).astimezone(_zone(timezone)).toordinal()


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_event_time = attrgetter("ts")


def _site(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    return host.split(":", 1)[0]


def _same_site(a: str, b: str) -> bool:
    # Subdomains of one site (shop.example.com vs example.com) count as internal navigation.
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _joinable_session(
    sessions: list[SessionWindow], t: int, campaign: str | None, rules: SessionRules
) -> SessionWindow | None:
    """The nearest session `t` may join under `rules`, or None (start a new one)."""
    timeout_us = rules.timeout_s * US_PER_S
    max_us = rules.max_s * US_PER_S
    day = local_day(t, rules.timezone) if rules.split_midnight else None
    best: SessionWindow | None = None
    best_distance = 0
    for s in sessions:
        if t < s.start_us - timeout_us or t > s.end_us + timeout_us:
            continue  # gap longer than the timeout (30:00 exactly still joins)
        if (s.end_us if s.end_us > t else t) - (s.start_us if s.start_us < t else t) >= max_us:
            continue  # would make the session span max_s or more
        if day is not None and local_day(s.start_us, rules.timezone) != day:
            continue  # sessions never span a local midnight when the project asks so
        if campaign is not None and s.campaign is not None and s.campaign != campaign:
            continue  # a new traffic source starts a new session
        if t < s.start_us:
            distance = s.start_us - t
        elif t > s.end_us:
            distance = t - s.end_us
        else:
            distance = 0
        if (
            best is None
            or distance < best_distance
            or (distance == best_distance and s.start_us < best.start_us)
        ):
            best, best_distance = s, distance
    return best


def _extend(session: SessionWindow, event: EventV1, t: int, campaign: str | None, seq: int) -> None:
    """Account `event` (at `t`) in `session`."""
    if t < session.start_us:
        session.start_us = t
    if t > session.end_us:
        session.end_us = t
    session.events += 1
    if not event.non_interactive:
        session.interactive_events += 1
    session.touched_seq = seq
    if campaign is not None and session.campaign is None:
        session.campaign = campaign
    if event.user_id:
        session.user_id = event.user_id
    if event.path is not None and (session.entry_path is None or t < session.entry_us):
        session.entry_path, session.entry_us = event.path, t
    _take_source(session, event, t)


def _take_source(session: SessionWindow, event: EventV1, t: int) -> None:
    """The session's source: that of its earliest event carrying a channel (by time, then event
    id, as the aggregator orders a session's events); `direct` when a page view comes first
    without one (navigation inside the site after a timeout, or an own-domain referrer)."""
    if event.channel:
        key = (t, event.event_id)
        if session.source is None or key < (session.source_us, session.source_event_id):
            session.source = TrafficSource.of(event)
            session.source_us, session.source_event_id = key
    elif session.source is None and (event.url is not None or event.path is not None):
        session.source = DIRECT_SOURCE
        # Any event that does say how the visit arrived still takes over.
        session.source_us, session.source_event_id = t, "\uffff"
    if session.source is not None:
        session.channel = session.source.channel
        session.referrer_domain = session.source.referrer_domain
