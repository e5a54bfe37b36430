"""The path of one event through ingest, one module per stage, each with one entry point:

    decode -> validate -> event_time -> enrich -> policy -> build

- `decode.decode`: an item's JSON bytes -> the payload Struct (size and NUL checks first);
- `validate.validate`: the payload -> a `Draft` of the event (ids, name, shape, page fields);
- `event_time.normalise_time`: the event time in UTC, clock skew corrected and bounded;
- `enrich.enrich`: device (user agent), acquisition (referrer, UTM, channel), geo and bot ranges;
- `policy.apply_policy`: the project's collection and privacy policy (consent, own domains,
  referrer spam, the IP policy, scrubbing);
- `build.build`: the `EventV1` that is published.

`path` runs them in this order (`path.STAGES`); a stage imports only the shared `draft` module
and rule modules of `services.ingest`, never another stage, so the path reads top to bottom and
each stage can be timed alone (`python -m bench.ingest_stages`).
"""

from __future__ import annotations

# The documented order; tests check `path.STAGES` and the stage modules against it.
STAGE_ORDER = ("decode", "validate", "event_time", "enrich", "policy", "build")
