"""What each storage tier holds for a project (or all projects): objects, rows, bytes, bytes per
event, date range and a projected monthly cost, plus the work the tier jobs have pending. Read by
GET /api/v1/tiers and `strata tier status`."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import msgspec

GIB = 1024**3


class TierPrices(msgspec.Struct, frozen=True, kw_only=True):
    """Per-GB-month prices in USD (defaults: OCI list prices; see docs/tiering.md)."""

    hot: float = 0.0425  # block volume (balanced) behind PostgreSQL
    cold: float = 0.0255  # Object Storage, Standard tier
    archive: float = 0.0026  # Object Storage, Archive tier


class TierUsage(msgspec.Struct, kw_only=True):
    """One tier's contents."""

    tier: str  # hot | cold | archive
    objects: int  # day partitions (hot) or day files (cold, archive)
    rows: int
    bytes: int
    bytes_per_event: float | None
    first_day: date | None
    last_day: date | None
    monthly_cost: float  # projected, at the tier's per-GB-month price


class PendingWork(msgspec.Struct, kw_only=True):
    """Days the tier jobs would act on at their next run."""

    cold_days: int  # exported days past hot_days still (partly) in PostgreSQL
    archive_parts: int  # cold parts past cold_days
    retention_parts: int  # parts past retention_days
    restores: int  # restore jobs in progress


class TierSummary(msgspec.Struct, kw_only=True):
    project: str | None
    currency: str
    prices_per_gb_month: TierPrices
    tiers: list[TierUsage]
    monthly_cost: float
    pending: PendingWork


def _cost(nbytes: int, price: float) -> float:
    return round(nbytes / GIB * price, 6)


async def tier_summary(
    pool: asyncpg.Pool,
    project_id: str | None,
    prices: TierPrices,
    *,
    now: datetime | None = None,
) -> TierSummary:
    """Per-tier usage of one project (or every project when None)."""
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    async with pool.acquire() as conn:
        # Each day partition holds one UTC day, so the days with rows are the partitions with
        # rows: counted per partition (a hash aggregate, ~4x cheaper than count(DISTINCT day)
        # over 3 million rows), over `event_rows` with the project as an index condition (not
        # the `events` view behind `$1 IS NULL OR ...`, which scanned every project's rows).
        # The first and last event come off the ends of the (project_id, ts) indexes.
        project_only = "" if project_id is None else " WHERE project_id = $1"
        args = () if project_id is None else (project_id,)
        hot = await conn.fetchrow(
            "SELECT coalesce(sum(n), 0)::bigint AS rows, count(*) AS days FROM"
            f" (SELECT tableoid, count(*) AS n FROM event_rows{project_only} GROUP BY tableoid) d",
            *args,
        )
        ends = await conn.fetchrow(
            f"SELECT min(ts) AS first, max(ts) AS last FROM event_rows{project_only}", *args
        )
        # PostgreSQL reports sizes per partition and table, not per project: a project's share
        # of the hot bytes (the events' partitions and their dictionaries of pages, clients
        # and sources) is estimated by its share of the rows.
        total_bytes = await conn.fetchval(
            "SELECT (COALESCE(sum(pg_total_relation_size(i.inhrelid)), 0)"
            " + pg_total_relation_size('event_pages') + pg_total_relation_size('event_clients')"
            " + pg_total_relation_size('event_sources'))::bigint"
            " FROM pg_inherits i WHERE i.inhparent = 'event_rows'::regclass"
        )
        total_rows = hot["rows"]
        if project_id is not None:
            total_rows = await conn.fetchval("SELECT count(*) FROM event_rows")
        hot_bytes = int(total_bytes * hot["rows"] / total_rows) if total_rows else 0
        files = await conn.fetch(
            "SELECT CASE WHEN storage_tier = 'Archive' THEN 'archive' ELSE 'cold' END AS tier,"
            " count(*) AS objects, COALESCE(sum(rows), 0)::bigint AS rows,"
            " COALESCE(sum(bytes), 0)::bigint AS bytes, min(day) AS first, max(day) AS last"
            " FROM day_files WHERE state = 'active' AND ($1::text IS NULL OR project_id = $1)"
            " GROUP BY 1",
            project_id,
        )
        pending = await conn.fetchrow(
            """
            WITH p AS (SELECT id, hot_days, cold_days, retention_days FROM projects
                       WHERE $1::text IS NULL OR id = $1)
            SELECT
              (SELECT count(*) FROM (
                 SELECT f.project_id, f.day FROM day_files f JOIN p ON p.id = f.project_id
                 LEFT JOIN day_tiers t ON t.project_id = f.project_id AND t.day = f.day
                 WHERE f.state = 'active' AND f.day < $2::date - p.hot_days
                 GROUP BY f.project_id, f.day, t.watermark
                 HAVING max(f.xid_to) > COALESCE(t.watermark, 0)) d) AS cold_days,
              (SELECT count(*) FROM day_files f JOIN p ON p.id = f.project_id
               JOIN day_tiers t ON t.project_id = f.project_id AND t.day = f.day
               WHERE f.state = 'active' AND f.storage_tier <> 'Archive'
                 AND f.day < $2::date - p.cold_days) AS archive_parts,
              (SELECT count(*) FROM day_files f JOIN p ON p.id = f.project_id
               WHERE f.state = 'active' AND f.day < $2::date - p.retention_days)
                 AS retention_parts,
              (SELECT count(*) FROM restores r JOIN p ON p.id = r.project_id
               WHERE r.state = 'restoring') AS restores
            """,
            project_id,
            today,
        )
    tiers = [
        TierUsage(
            tier="hot",
            objects=hot["days"],
            rows=hot["rows"],
            bytes=hot_bytes,
            bytes_per_event=round(hot_bytes / hot["rows"], 2) if hot["rows"] else None,
            first_day=ends["first"].astimezone(UTC).date() if ends["first"] else None,
            last_day=ends["last"].astimezone(UTC).date() if ends["last"] else None,
            monthly_cost=_cost(hot_bytes, prices.hot),
        )
    ]
    by_tier = {r["tier"]: r for r in files}
    for name, price in (("cold", prices.cold), ("archive", prices.archive)):
        row = by_tier.get(name)
        rows, nbytes = (row["rows"], row["bytes"]) if row else (0, 0)
        tiers.append(
            TierUsage(
                tier=name,
                objects=row["objects"] if row else 0,
                rows=rows,
                bytes=nbytes,
                bytes_per_event=round(nbytes / rows, 2) if rows else None,
                first_day=row["first"] if row else None,
                last_day=row["last"] if row else None,
                monthly_cost=_cost(nbytes, price),
            )
        )
    return TierSummary(
        project=project_id,
        currency="USD",
        prices_per_gb_month=prices,
        tiers=tiers,
        monthly_cost=round(sum(t.monthly_cost for t in tiers), 6),
        pending=PendingWork(
            cold_days=pending["cold_days"],
            archive_parts=pending["archive_parts"],
            retention_parts=pending["retention_parts"],
            restores=pending["restores"],
        ),
    )


__all__ = ["TierPrices", "TierSummary", "TierUsage", "tier_summary"]
