"""Payloads of the analytics events API (`POST /api/v1/analytics/events` and `.../batch`):
the event schema of the platform's analytics PRD (eventId, eventType, millisecond timestamp,
deviceInfo, appContext, consentFlags), as typed msgspec Structs (`gc=False`: decoded from
JSON, they are never part of a reference cycle)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from services.ingest.segment_payloads import Identifier


class DeviceInfo(msgspec.Struct, frozen=True, gc=False):
    userAgent: str | None = None
    screenResolution: str | None = None
    deviceType: str | None = None  # desktop | mobile | tablet
    operatingSystem: str | None = None
    browser: str | None = None
    language: str | None = None
    timezone: str | None = None


class AppContext(msgspec.Struct, frozen=True, gc=False):
    appVersion: str | None = None
    environment: str | None = None  # production | staging | development
    feature: str | None = None
    page: str | None = None  # a path ("/pricing") or a full URL
    referrer: str | None = None


class ConsentFlags(msgspec.Struct, frozen=True, gc=False):
    analytics: bool = True
    marketing: bool = True
    personalization: bool = True


class AnalyticsEvent(msgspec.Struct, frozen=True, gc=False):
    """One event of the analytics events API."""

    eventType: str | None = None  # page_view, screen_view, identify, or any custom name
    eventId: str | None = None
    # Unix milliseconds (the schema's type) or an ISO-8601 string.
    timestamp: float | datetime | None = None
    sentAt: float | datetime | None = None
    eventVersion: str | None = None
    userId: Identifier | None = None
    anonymousId: Identifier | None = None
    sessionId: str | None = None
    deviceInfo: DeviceInfo | None = None
    appContext: AppContext | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    consentFlags: ConsentFlags | None = None
    writeKey: str | None = None


class AnalyticsEventBatch(msgspec.Struct, frozen=True, gc=False):
    """`POST /api/v1/analytics/events/batch`: `{"events": [...]}` (a bare array is accepted
    too). Items stay raw JSON so each is sized and validated on its own."""

    events: list[msgspec.Raw] | None = None
    writeKey: str | None = None


analytics_event_decoder = msgspec.json.Decoder(AnalyticsEvent)
analytics_batch_decoder = msgspec.json.Decoder(AnalyticsEventBatch)
raw_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
