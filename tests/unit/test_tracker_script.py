"""The browser tracker as shipped: its size budget, that the served script is built from the
current source, Accept-Encoding handling and the cookieless id's properties."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from libs.common.subjects import Subjects
from services.ingest.cookieless import cookieless_id, salts_bucket, sent_by_tracker
from services.ingest.segment_payloads import SegmentContext, SegmentLibrary
from services.ingest.tracker.script import TrackerScript, accepts_gzip

TRACKER_DIR = Path(__file__).resolve().parents[2] / "services" / "ingest" / "tracker"
GZIP_BUDGET_BYTES = 3 * 1024


def test_the_served_tracker_stays_within_3_kb_gzipped() -> None:
    script = TrackerScript.packaged()
    assert len(script.gzipped) < GZIP_BUDGET_BYTES, (
        f"t.js is {len(script.gzipped)} bytes gzipped; the budget is {GZIP_BUDGET_BYTES}"
    )
    assert gzip.decompress(script.gzipped) == script.body


def test_the_minified_script_is_built_from_the_current_source() -> None:
    source_hash = hashlib.sha256((TRACKER_DIR / "strata.js").read_bytes()).hexdigest()[:16]
    banner = (TRACKER_DIR / "strata.min.js").read_text().splitlines()[0]
    built_from = re.fullmatch(r"/\*! strata\.js src:([0-9a-f]{16}) \*/", banner)
    assert built_from is not None, f"unexpected banner {banner!r}"
    assert built_from.group(1) == source_hash, (
        "strata.min.js is stale: run `just tracker` after changing strata.js"
    )


def test_the_version_names_the_exact_bytes() -> None:
    one = TrackerScript.from_bytes(b"console.log(1)")
    assert one.version == TrackerScript.from_bytes(b"console.log(1)").version
    assert one.version != TrackerScript.from_bytes(b"console.log(2)").version
    assert one.versioned_path == f"/t.js?v={one.version}"


def test_accept_encoding_is_read_with_its_q_values() -> None:
    assert accepts_gzip("gzip, deflate, br")
    assert accepts_gzip("br;q=1.0, gzip;q=0.8")
    assert accepts_gzip("*")
    assert not accepts_gzip("")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("br, gzip;q=0.0")


def test_a_cookieless_id_is_stable_for_a_visitor_within_a_salt_and_nothing_else() -> None:
    salt, other_day = b"s" * 32, b"t" * 32
    visitor = cookieless_id(salt, "acme", "203.0.113.9", "Firefox")
    assert visitor == cookieless_id(salt, "acme", "203.0.113.9", "Firefox")
    assert visitor.startswith("cl-") and "203.0.113.9" not in visitor
    others = {
        cookieless_id(other_day, "acme", "203.0.113.9", "Firefox"),
        cookieless_id(salt, "globex", "203.0.113.9", "Firefox"),
        cookieless_id(salt, "acme", "203.0.113.10", "Firefox"),
        cookieless_id(salt, "acme", "203.0.113.9", "Chrome"),
    }
    assert visitor not in others and len(others) == 4


def test_only_the_tracker_library_asks_for_a_derived_id() -> None:
    assert sent_by_tracker(SegmentContext(library=SegmentLibrary(name="strata.js")))
    assert not sent_by_tracker(SegmentContext(library=SegmentLibrary(name="analytics.js")))
    assert not sent_by_tracker(SegmentContext())
    assert not sent_by_tracker(None)


def test_the_salt_bucket_name_is_a_valid_key_value_bucket_per_prefix() -> None:
    assert salts_bucket(Subjects("strata")) == "STRATA_COOKIELESS_SALTS"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", salts_bucket(Subjects("a.b")))
