"""The `strata` operator command line (migrations, keys, projects, dead letters, tiers)."""
