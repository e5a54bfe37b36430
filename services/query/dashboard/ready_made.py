"""The dashboards every project starts with: overview, product and operations. Created the
first time a project's dashboards are listed, with fixed ids, so a deleted one stays deleted
(its id is taken) and an edited one keeps its edits (they are later versions)."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

_OVERVIEW_METRICS = "visitors,pageviews,sessions,bounce_rate,avg_session_duration"

# (insight id, name, definition)
INSIGHTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "overview-traffic",
        "Visitors and pageviews",
        {
            "kind": "metrics",
            "query": {"metrics": _OVERVIEW_METRICS},
            "chart": {"type": "line", "series": ["visitors", "pageviews"]},
        },
    ),
    ("overview-pages", "Top pages", {"kind": "pages", "query": {"limit": "10"}, "chart": {}}),
    (
        "overview-channels",
        "Channels",
        {"kind": "sources", "query": {"by": "channel", "limit": "10"}, "chart": {}},
    ),
    (
        "overview-devices",
        "Devices",
        {"kind": "devices", "query": {"by": "device_type", "limit": "10"}, "chart": {}},
    ),
    (
        "overview-countries",
        "Countries",
        {
            "kind": "metrics",
            "query": {"metrics": "visitors", "breakdown": "country", "limit": "50"},
            "chart": {"type": "map"},
        },
    ),
    (
        "product-signup-funnel",
        "Signup funnel",
        {
            "kind": "funnel",
            "query": {
                "steps": [
                    {"event": "$pageview", "label": "Visited"},
                    {
                        "event": "$pageview",
                        "label": "Saw /pricing",
                        "conditions": [{"property": "path", "value": "/pricing"}],
                    },
                    {"event": "signup", "label": "Signed up"},
                ],
                "window": {"value": 7, "unit": "day"},
            },
            "chart": {"type": "funnel"},
        },
    ),
    (
        "product-retention",
        "Weekly retention",
        {
            "kind": "retention",
            "query": {
                "start_event": {"event": "$pageview"},
                "return_event": {"event": "$pageview"},
                "period": "week",
                "intervals": 6,
            },
            "chart": {"type": "heatmap"},
        },
    ),
    (
        "product-paths",
        "Paths from the home page",
        {
            "kind": "paths",
            "query": {"start_point": "/", "steps": 4, "edge_limit": 30},
            "chart": {"type": "sankey"},
        },
    ),
    (
        "product-events",
        "Product events",
        {
            "kind": "metrics",
            "query": {"metrics": "event:signup,event:add_to_cart,event:purchase,event:search"},
            "chart": {"type": "line"},
        },
    ),
    (
        "operations-performance",
        "Page performance",
        {"kind": "performance", "query": {}, "chart": {}},
    ),
    (
        "operations-events",
        "Events and bots",
        {
            "kind": "metrics",
            "query": {"metrics": "events,bot_share,cookieless_share"},
            "chart": {"type": "line", "series": ["events"]},
        },
    ),
    (
        "operations-browsers",
        "Browsers",
        {"kind": "devices", "query": {"by": "browser", "limit": "10"}, "chart": {}},
    ),
]

# (dashboard id, name, description, [(insight id, width)])
DASHBOARDS: list[tuple[str, str, str, list[tuple[str, int]]]] = [
    (
        "overview",
        "Overview",
        "Traffic, pages, channels, devices and countries",
        [
            ("overview-traffic", 2),
            ("overview-pages", 1),
            ("overview-channels", 1),
            ("overview-devices", 1),
            ("overview-countries", 1),
        ],
    ),
    (
        "product",
        "Product",
        "Signup funnel, retention, paths and product events",
        [
            ("product-signup-funnel", 1),
            ("product-retention", 1),
            ("product-paths", 2),
            ("product-events", 2),
        ],
    ),
    (
        "operations",
        "Operations",
        "Page performance, event volume, bots and browsers",
        [("operations-performance", 2), ("operations-events", 2), ("operations-browsers", 1)],
    ),
]


async def ensure_ready_made(conn: asyncpg.Connection, project_id: str) -> None:
    """Insert the ready-made insights and dashboards the project has never had."""
    async with conn.transaction():
        # One project at a time: two first visits at once must not both insert.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ready-made:' || $1))", project_id
        )
        known = await conn.fetchval(
            "SELECT 1 FROM dashboards WHERE project_id = $1 AND dashboard_id = 'overview'",
            project_id,
        )
        if known:
            return
        for insight_id, name, definition in INSIGHTS:
            await conn.execute(
                """INSERT INTO insights (project_id, insight_id, version, name, definition)
                   VALUES ($1, $2, 1, $3, $4::jsonb) ON CONFLICT DO NOTHING""",
                project_id,
                insight_id,
                name,
                msgspec.json.encode(definition).decode(),
            )
        for dashboard_id, name, description, tiles in DASHBOARDS:
            definition = {"tiles": [{"insight_id": i, "width": w} for i, w in tiles]}
            await conn.execute(
                """INSERT INTO dashboards (project_id, dashboard_id, version, name, description,
                                           definition)
                   VALUES ($1, $2, 1, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING""",
                project_id,
                dashboard_id,
                name,
                description,
                msgspec.json.encode(definition).decode(),
            )
