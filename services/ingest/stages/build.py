"""Stage 6, build: the draft as the `EventV1` that is published, constructed once."""

from __future__ import annotations

from libs.common.schemas.events_v1 import EventV1
from services.ingest.stages.draft import Draft


def build(draft: Draft) -> EventV1:
    """The event, its fields given by position (EventV1's order)."""
    return EventV1(
        draft.event_id,
        draft.project_id,
        draft.type,
        draft.name,
        draft.ts,
        draft.received_at,
        draft.distinct_id,
        draft.anonymous_id,
        draft.user_id,
        draft.previous_id,
        draft.group_id,
        draft.properties,
        draft.traits,
        draft.url,
        draft.path,
        draft.title,
        draft.referrer,
        draft.referrer_domain,
        draft.channel,
        draft.utm_source,
        draft.utm_medium,
        draft.utm_campaign,
        draft.utm_term,
        draft.utm_content,
        draft.browser,
        draft.browser_version,
        draft.os,
        draft.os_version,
        draft.device_type,
        draft.country,
        draft.region,
        draft.city,
        draft.locale,
        draft.ip,
        draft.is_bot,
        draft.non_interactive,
    )
