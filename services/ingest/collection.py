"""What one request's events are collected under: the service's geo database, bot ranges and
referrer spam list with the project's own domains and privacy policy. The `enrich` and `policy`
stages (services/ingest/stages) apply them; docs/privacy.md and docs/enrichment.md describe the
rules.
"""

from __future__ import annotations

from collections.abc import Callable

from libs.common.privacy_policy import CONSENT_COOKIELESS
from services.ingest.geo import GeoLocator
from services.ingest.networks import NetworkSet
from services.ingest.privacy import ProjectPrivacy
from services.ingest.referrer_spam import ReferrerSpamList

# (client IP, user agent) -> today's cookieless visitor id of this project.
CookielessIdOf = Callable[[str | None, str | None], str]


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
