-- Per-project privacy controls, read by ingest with the write-key lookup (docs/privacy.md).
-- ip_policy: what happens to the client IP after geo and bot enrichment:
--   drop (never stored or published), truncate (IPv4 /24, IPv6 /48 on EventV1.ip), keep.
-- consent_policy: events sent without analytics consent are dropped, or recorded cookieless
--   (persistent ids stripped, a daily-salted id instead, properties.$cookieless = true).
-- scrub_rules / scrub_regexes: values redacted to "[redacted]" in properties, traits, URLs,
--   referrers and titles before anything is published.
ALTER TABLE projects
    ADD COLUMN ip_policy text NOT NULL DEFAULT 'drop'
        CHECK (ip_policy IN ('drop', 'truncate', 'keep')),
    ADD COLUMN consent_policy text NOT NULL DEFAULT 'drop'
        CHECK (consent_policy IN ('drop', 'cookieless')),
    ADD COLUMN scrub_rules text[] NOT NULL DEFAULT '{}'
        CHECK (scrub_rules <@ ARRAY['email', 'card', 'phone']::text[]),
    ADD COLUMN scrub_regexes text[] NOT NULL DEFAULT '{}';
