-- A project's own sites (docs/enrichment.md, "Own domains"): a referrer on one of them, or on a
-- subdomain of one, is navigation inside the project's sites, never a traffic source. Read by
-- ingest with the write-key lookup; set with `strata project set --own-domains`.
ALTER TABLE projects ADD COLUMN own_domains text[] NOT NULL DEFAULT '{}';
