"""The last step before an event is published: what ingest learns from the client IP (geo,
bot ranges) and what the project's privacy policy allows to leave ingest (consent, IP,
scrubbing). docs/privacy.md and docs/enrichment.md describe the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from libs.common.privacy_policy import CONSENT_COOKIELESS
from libs.common.schemas.events_v1 import ALIAS, IDENTIFY, EventV1
from services.ingest.event_mapping import ItemSkipped
from services.ingest.geo import GeoLocator
from services.ingest.networks import NetworkSet
from services.ingest.privacy import ProjectPrivacy, cookieless_event, published_ip

# (client IP, user agent) -> today's cookieless visitor id of this project.
CookielessIdOf = Callable[[str | None, str | None], str]

NO_CONSENT = "analytics consent withheld"


class ConsentWithheld(ItemSkipped):
    """The event must not be recorded: no analytics consent, and the project drops such events
    (or the event is an identify/alias, which has no meaning without persistent ids)."""


class CollectionRules:
    """Geo and bot ranges (the service's) with one project's privacy policy."""

    __slots__ = ("bot_networks", "cookieless_id", "geo", "privacy")

    def __init__(
        self,
        privacy: ProjectPrivacy,
        geo: GeoLocator | None = None,
        bot_networks: NetworkSet | None = None,
        cookieless_id: CookielessIdOf | None = None,
    ) -> None:
        self.privacy = privacy
        self.geo = geo
        self.bot_networks = bot_networks if bot_networks else None
        self.cookieless_id = cookieless_id

    @property
    def needs_cookieless_ids(self) -> bool:
        """Whether events without consent are kept cookieless (so an id must be derivable)."""
        return self.privacy.consent_policy == CONSENT_COOKIELESS

    def finish(
        self, event: EventV1, ip: str | None, user_agent: str | None, consented: bool = True
    ) -> EventV1:
        """The event as it may be published; raises ConsentWithheld when it must not be."""
        if not consented:
            event = self._without_consent(event, ip, user_agent)
        changes: dict[str, Any] = {}
        if ip is not None:
            if self.geo is not None and event.country is None:
                place = self.geo.locate(ip)
                if place.country is not None:
                    changes["country"] = place.country
                    changes["region"] = place.region
                    changes["city"] = place.city
            if (
                not event.is_bot
                and self.bot_networks is not None
                and self.bot_networks.contains(ip)
            ):
                changes["is_bot"] = True
            # Enrichment is done with the address: from here on only the policy's form of it.
            kept = published_ip(ip, self.privacy.ip_policy)
            if kept != event.ip:
                changes["ip"] = kept
        elif event.ip is not None:
            changes["ip"] = None
        if changes:
            event = msgspec.structs.replace(event, **changes)
        return self.privacy.scrubber.event(event)

    def _without_consent(self, event: EventV1, ip: str | None, user_agent: str | None) -> EventV1:
        if self.privacy.consent_policy != CONSENT_COOKIELESS or self.cookieless_id is None:
            raise ConsentWithheld(f"{NO_CONSENT}: the project drops such events")
        if event.name in (IDENTIFY, ALIAS):
            raise ConsentWithheld(
                f"{NO_CONSENT}: {event.type} links persistent ids and is not recorded cookieless"
            )
        return cookieless_event(event, self.cookieless_id(ip, user_agent))
