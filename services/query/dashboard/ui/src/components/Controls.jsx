import { useState } from "preact/hooks";
import { PRESETS } from "../dates.js";
import { setQuery } from "../router.jsx";

// The date picker: relative periods or a custom range; both end up as URL parameters.
export function DateControls({ range, interval, showInterval = true }) {
  const [custom, setCustom] = useState(range.key === "custom");
  return (
    <div class="controls" role="group" aria-label="Date range">
      <label>
        Period{" "}
        <select
          value={custom ? "custom" : range.key}
          onChange={(e) => {
            const v = e.currentTarget.value;
            if (v === "custom") {
              setCustom(true);
              setQuery({ range: null, from: range.from, to: range.to });
            } else {
              setCustom(false);
              setQuery({ range: v, from: null, to: null });
            }
          }}
        >
          {PRESETS.map(([key, label]) => (
            <option value={key}>{label}</option>
          ))}
          <option value="custom">Custom…</option>
        </select>
      </label>
      {custom && (
        <>
          <label>
            From <input type="date" value={range.from} onChange={(e) => setQuery({ range: null, from: e.currentTarget.value, to: range.to })} />
          </label>
          <label>
            To <input type="date" value={range.to} onChange={(e) => setQuery({ range: null, from: range.from, to: e.currentTarget.value })} />
          </label>
        </>
      )}
      {showInterval && (
        <label>
          Interval{" "}
          <select value={interval} onChange={(e) => setQuery({ interval: e.currentTarget.value })}>
            {["hour", "day", "week", "month"].map((i) => (
              <option value={i}>{i}</option>
            ))}
          </select>
        </label>
      )}
    </div>
  );
}

// Active filters (dimension:value, from the URL) as removable chips.
export function FilterChips({ filters }) {
  if (filters.length === 0) return null;
  return (
    <ul class="chips" aria-label="Active filters">
      {filters.map((f) => (
        <li>
          <span>
            {f.split(":")[0]} is <strong>{f.slice(f.indexOf(":") + 1)}</strong>
          </span>
          <button
            type="button"
            aria-label={`Remove filter ${f}`}
            onClick={() => setQuery({ filter: filters.filter((x) => x !== f) })}
          >
            ×
          </button>
        </li>
      ))}
      <li>
        <button type="button" class="link" onClick={() => setQuery({ filter: null })}>
          Clear all
        </button>
      </li>
    </ul>
  );
}

export function addFilter(filters, dimension, value) {
  const f = `${dimension}:${value}`;
  if (!filters.includes(f)) setQuery({ filter: [...filters, f] });
}
