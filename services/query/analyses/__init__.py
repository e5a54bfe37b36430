"""The analyses (funnels, retention, paths, cohorts, custom metrics, experiments), each
written once against the `events_scan` view so it answers the same over every storage tier.
docs/analytics.md states the semantics these modules implement."""
