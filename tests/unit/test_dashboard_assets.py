"""The dashboard as shipped: dist/ is built from the current sources and lock file, the whole
app stays within 200 KB of gzipped JavaScript, and index.html names each asset by version."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from services.query.dashboard.assets import DashboardAssets

UI = Path(__file__).resolve().parents[2] / "services" / "query" / "dashboard" / "ui"
JS_BUDGET_GZIPPED = 200 * 1024


def source_hash() -> str:
    """What build.sh records: sha256sum's lines over src/ and package-lock.json, hashed."""
    files = sorted(
        [str(p.relative_to(UI)) for p in (UI / "src").rglob("*") if p.is_file()]
        + ["package-lock.json"],
        key=lambda name: name.encode(),
    )
    lines = "".join(f"{hashlib.sha256((UI / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def test_the_built_app_is_built_from_the_current_sources() -> None:
    banner = (UI / "dist" / "app.js").read_text().split("*/", 1)[0]
    built_from = re.fullmatch(r"/\*! strata dashboard src:([0-9a-f]{16}) ", banner)
    assert built_from is not None, f"unexpected banner {banner!r}"
    assert built_from.group(1) == source_hash(), (
        "services/query/dashboard/ui/dist is stale: run `just dashboard` after changing src/"
    )
    assert (UI / "dist" / "index.html").read_bytes() == (UI / "src" / "index.html").read_bytes()


def test_the_whole_app_stays_within_200_kb_of_gzipped_javascript() -> None:
    scripts = [p for p in (UI / "dist").iterdir() if p.suffix == ".js"]
    total = sum(len(gzip.compress(p.read_bytes(), 9)) for p in scripts)
    assert 0 < total <= JS_BUDGET_GZIPPED, f"{total} bytes gzipped; the budget is 200 KB"


def test_index_names_each_asset_by_its_version() -> None:
    assets = DashboardAssets.packaged()
    html = assets.index.body.decode()
    for name in ("app.js", "app.css"):
        version = assets.assets[name].version
        assert f'"/ui/{name}?v={version}"' in html
        assert version == hashlib.sha256((UI / "dist" / name).read_bytes()).hexdigest()[:12]
