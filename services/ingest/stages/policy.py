"""Stage 5, apply the project's collection and privacy policy: what may leave ingest
(docs/privacy.md, docs/enrichment.md). In order: an event without analytics consent is dropped
or made cookieless; a referrer on the spam list marks a bot; a referrer on one of the
project's own domains is navigation, not a source; the client address is kept, truncated or
dropped; the scrubbing rules redact values."""

from __future__ import annotations

from libs.common.privacy_policy import CONSENT_COOKIELESS
from libs.common.schemas.events_v1 import ALIAS, IDENTIFY
from services.ingest.collection import CollectionRules
from services.ingest.enrichment import CLICK_ID_PROPERTY, SOURCE_PROPERTIES, same_site
from services.ingest.privacy import SCRUBBED_FIELDS, cookieless_fields, published_ip
from services.ingest.stages.draft import Draft, ItemSkipped, RequestInfo

NO_CONSENT = "analytics consent withheld"


class ConsentWithheld(ItemSkipped):
    """The event must not be recorded: no analytics consent, and the project drops such events
    (or the event is an identify/alias, which has no meaning without persistent ids)."""

    code = "consent_withheld"


def apply_policy(draft: Draft, request: RequestInfo) -> None:
    """Make the draft what the project allows to be published; raises ConsentWithheld when
    it must not be. Without collection rules (`request.collection` None) nothing applies."""
    rules = request.collection
    if rules is None:
        return
    if not draft.consented:
        _without_consent(draft, rules)
    if draft.referrer_domain is not None and (rules.referrer_spam is not None or rules.own_domains):
        _referrer_rules(draft, rules)
    # Enrichment is done with the address: from here on only the policy's form of it, worked
    # out once per distinct address of the request (the same object, nearly always).
    address = draft.address
    if address is not request.last_address:
        request.last_published_ip = published_ip(address, rules.privacy.ip_policy)
        request.last_address = address
    draft.ip = request.last_published_ip
    scrubber = rules.privacy.scrubber
    if scrubber.active:
        for field in SCRUBBED_FIELDS:
            value = getattr(draft, field)
            # As Scrubber.event: every text present, and properties/traits when not empty.
            if value is not None and (type(value) is not dict or value):
                setattr(draft, field, scrubber.value(value))


def _without_consent(draft: Draft, rules: CollectionRules) -> None:
    if rules.privacy.consent_policy != CONSENT_COOKIELESS or rules.cookieless_id is None:
        raise ConsentWithheld(f"{NO_CONSENT}: the project drops such events")
    if draft.name in (IDENTIFY, ALIAS):
        raise ConsentWithheld(
            f"{NO_CONSENT}: {draft.type} links persistent ids and is not recorded cookieless"
        )
    visitor = rules.cookieless_id(draft.address, draft.user_agent)
    for field, value in cookieless_fields(draft.properties, visitor).items():
        setattr(draft, field, value)


def _referrer_rules(draft: Draft, rules: CollectionRules) -> None:
    """Referrer spam is bot traffic; a referrer on one of the project's own domains is
    navigation inside its sites: no referrer domain, and no channel unless tagged."""
    referrer = draft.referrer_domain
    assert referrer is not None
    if rules.referrer_spam is not None and referrer in rules.referrer_spam:
        draft.is_bot = True
    if rules.own_domains and any(same_site(referrer, domain) for domain in rules.own_domains):
        draft.referrer_domain = None
        properties = draft.properties
        tagged = draft.utm_source or draft.utm_medium or draft.utm_campaign
        if not tagged and CLICK_ID_PROPERTY not in properties:
            draft.channel = None
        if any(name in properties for name in SOURCE_PROPERTIES):
            kept = {k: v for k, v in properties.items() if k not in SOURCE_PROPERTIES}
            if CLICK_ID_PROPERTY in properties:
                kept[CLICK_ID_PROPERTY] = properties[CLICK_ID_PROPERTY]
            draft.properties = kept
