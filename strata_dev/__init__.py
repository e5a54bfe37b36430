"""Development tooling: the local stack (`strata up`), its embedded NATS and PostgreSQL, and the
demo traffic generator. Never needed, nor installed, by a production pod."""
