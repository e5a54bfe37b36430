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
from services.ingest.enrichment import CLICK_ID_PROPERTY, SOURCE_PROPERTIES, same_site
from services.ingest.event_mapping import ItemSkipped
from services.ingest.geo import GeoLocator
from services.ingest.networks import NetworkSet
from services.ingest.privacy import ProjectPrivacy, cookieless_event, published_ip
from services.ingest.referrer_spam import ReferrerSpamList

# (client IP, user agent) -> today's cookieless visitor id of this project.
CookielessIdOf = Callable[[str | None, str | None], str]

NO_CONSENT = "analytics consent withheld"


class ConsentWithheld(ItemSkipped):
    """The event must not be recorded: no analytics consent, and the project drops such events
    (or the event is an identify/alias, which has no meaning without persistent ids)."""

    code = "consent_withheld"


class CollectionRules:
    """Geo and bot ranges (the service's) with one project's privacy policy."""

    __slots__ = (
        "bot_networks",
        "cookieless_id",
        "geo",
        "own_domains",
        "privacy",
        "referrer_spam",
    )

    def __init__(
        self,
        privacy: ProjectPrivacy,
        geo: GeoLocator | None = None,
        bot_networks: NetworkSet | None = None,
        cookieless_id: CookielessIdOf | None = None,
        *,
        own_domains: tuple[str, ...] = (),
        referrer_spam: ReferrerSpamList | None = None,
    ) -> None:
        self.privacy = privacy
        self.geo = geo
        self.bot_networks = bot_networks if bot_networks else None
        self.cookieless_id = cookieless_id
        self.own_domains = own_domains
        self.referrer_spam = referrer_spam if referrer_spam else None

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
        if event.referrer_domain is not None:
            self._referrer_rules(event, changes)
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

    def _referrer_rules(self, event: EventV1, changes: dict[str, Any]) -> None:
        """Referrer spam is bot traffic; a referrer on one of the project's own domains is
        navigation inside its sites: no referrer domain, and no channel unless tagged."""
        referrer = event.referrer_domain
        assert referrer is not None
        if self.referrer_spam is not None and referrer in self.referrer_spam:
            changes["is_bot"] = True
        if any(same_site(referrer, domain) for domain in self.own_domains):
            changes["referrer_domain"] = None
            tagged = event.utm_source or event.utm_medium or event.utm_campaign
            if not tagged and CLICK_ID_PROPERTY not in event.properties:
                changes["channel"] = None
            if any(name in event.properties for name in SOURCE_PROPERTIES):
                kept = {k: v for k, v in event.properties.items() if k not in SOURCE_PROPERTIES}
                if CLICK_ID_PROPERTY in event.properties:
                    kept[CLICK_ID_PROPERTY] = event.properties[CLICK_ID_PROPERTY]
                changes["properties"] = kept

    def _without_consent(self, event: EventV1, ip: str | None, user_agent: str | None) -> EventV1:
        if self.privacy.consent_policy != CONSENT_COOKIELESS or self.cookieless_id is None:
            raise ConsentWithheld(f"{NO_CONSENT}: the project drops such events")
        if event.name in (IDENTIFY, ALIAS):
            raise ConsentWithheld(
                f"{NO_CONSENT}: {event.type} links persistent ids and is not recorded cookieless"
            )
        return cookieless_event(event, self.cookieless_id(ip, user_agent))
