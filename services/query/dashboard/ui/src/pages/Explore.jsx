import { useRef, useState } from "preact/hooks";
import { api } from "../api.js";
import { DataTable } from "../components/DataTable.jsx";
import { ErrorNote, QueryView } from "../components/Status.jsx";
import { formatDuration, formatTime } from "../format.js";
import { useInterval, useQuery } from "../hooks.js";
import { Link, setQuery, useLocation } from "../router.jsx";

const EVENT_COLUMNS = (project) => [
  { label: "Time", value: (e) => e.ts, format: formatTime },
  { label: "Event", value: (e) => e.name },
  { label: "Person", value: (e) => e.user_id || e.distinct_id, format: (v) => <Link href={`/p/${project}/persons/${encodeURIComponent(v)}`}>{v}</Link> },
  { label: "Page", value: (e) => e.path || "" },
  { label: "Country", value: (e) => e.country || "" },
  { label: "Browser", value: (e) => e.browser || "" },
  { label: "Properties", value: (e) => e.properties, format: (p) => <code>{JSON.stringify(p).slice(0, 80)}</code> },
];

// Raw events, newest first, searchable by name, person and property; "Live" tails new ones.
export function Events({ project }) {
  const { search } = useLocation();
  const filters = { name: search.getAll("name"), distinct_id: search.get("distinct_id") || "", property: search.getAll("property") };
  const [live, setLive] = useState(false);
  const [tail, setTail] = useState([]);
  const newest = useRef(null);
  const key = JSON.stringify([project, filters]);
  const page = useQuery(key, async () => {
    const data = await api("/api/v1/analytics/events", { project, query: { ...filters, limit: 50 } });
    newest.current = data.events[0] ? data.events[0].ts : new Date().toISOString();
    setTail([]);
    return data;
  });
  useInterval(
    async () => {
      if (!newest.current) return;
      try {
        const data = await api("/api/v1/analytics/events", { project, query: { ...filters, from: newest.current, order: "asc", limit: 100 } });
        const seen = new Set([...tail, ...((page.data && page.data.events) || [])].map((e) => e.event_id));
        const fresh = data.events.filter((e) => !seen.has(e.event_id));
        if (fresh.length) {
          newest.current = fresh[fresh.length - 1].ts;
          setTail((t) => [...fresh.reverse(), ...t].slice(0, 200));
        }
      } catch (_) {
        // The next tick retries.
      }
    },
    live ? 2000 : 0,
  );
  const submit = (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const property = String(form.get("property") || "").trim();
    setQuery({ name: form.get("name") || null, distinct_id: form.get("distinct_id") || null, property: property || null });
  };
  return (
    <section>
      <h1>Events</h1>
      <form class="builder" onSubmit={submit} aria-label="Search events">
        <label>
          Event name <input name="name" defaultValue={filters.name[0] || ""} />
        </label>
        <label>
          Person (distinct id) <input name="distinct_id" defaultValue={filters.distinct_id} />
        </label>
        <label>
          Property key:value <input name="property" defaultValue={filters.property[0] || ""} placeholder="plan:pro" />
        </label>
        <button type="submit" class="primary">
          Search
        </button>
        <label class="toggle">
          <input type="checkbox" checked={live} onChange={(e) => setLive(e.currentTarget.checked)} /> Live tail
        </label>
      </form>
      {live && (
        <p role="status" class="muted" data-testid="live-tail">
          Live: {tail.length} new event(s) since you started watching.
        </p>
      )}
      <QueryView query={page}>
        {(data) => <DataTable caption="Events, newest first" csvName="events" columns={EVENT_COLUMNS(project)} rows={[...tail, ...data.events]} />}
      </QueryView>
    </section>
  );
}

export function Person({ project, id }) {
  const journey = useQuery(`j${project}${id}`, () => api(`/api/v1/analytics/users/${encodeURIComponent(id)}/journey`, { project, query: { limit: 500 } }));
  return (
    <section>
      <h1>Person {id}</h1>
      <QueryView query={journey}>
        {(data) => (
          <>
            <p class="muted">
              Known as {data.distinct_ids.join(", ")} · {data.sessions.length} sessions · {data.events.length} events shown
            </p>
            <ol class="journey" aria-label="Sessions">
              {data.sessions.map((s) => (
                <li>
                  <h2>
                    {formatTime(s.start)} · {formatDuration(s.duration_s)} · {s.pageviews} pageviews · {s.channel || "direct"} · {s.device_type || ""}
                  </h2>
                  <ul>
                    {data.events
                      .filter((e) => e.session_id === s.session_id)
                      .map((e) => (
                        <li>
                          <time dateTime={e.ts}>{new Date(e.ts).toLocaleTimeString("en-GB")}</time> <strong>{e.name}</strong> {e.path || ""}
                        </li>
                      ))}
                  </ul>
                </li>
              ))}
            </ol>
          </>
        )}
      </QueryView>
    </section>
  );
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log10(n) / 3));
  return `${(n / 1000 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function Tiers({ project }) {
  const tiers = useQuery(`t${project}`, () => api("/api/v1/tiers", { project }));
  return (
    <section>
      <h1>Storage tiers</h1>
      <p class="muted">
        Hot days live in PostgreSQL, then move to day files in object storage (cold) and to the Archive tier. A question that needs archived
        days starts a restore; its progress shows in place of the chart, then the answer.
      </p>
      <QueryView query={tiers}>
        {(data) => (
          <>
            <DataTable
              caption="What each tier holds"
              csvName="tiers"
              columns={[
                { label: "Tier", value: (t) => t.tier },
                { label: "Rows", value: (t) => t.rows, numeric: true },
                { label: "Objects", value: (t) => t.objects, numeric: true },
                { label: "Size", value: (t) => t.bytes, format: bytes, numeric: true },
                { label: "Bytes per event", value: (t) => t.bytes_per_event, format: (v) => (v ? v.toFixed(1) : "–"), numeric: true },
                { label: "Days", value: (t) => (t.first_day ? `${t.first_day} – ${t.last_day}` : "–") },
                { label: "Cost per month (USD)", value: (t) => t.monthly_cost, format: (v) => `$${v.toFixed(4)}`, numeric: true },
              ]}
              rows={data.tiers}
            />
            <p>
              Pending: {data.pending.cold_days} day(s) to move cold, {data.pending.archive_parts} file(s) to archive, {data.pending.retention_parts}{" "}
              past retention, {data.pending.restores} restore(s) running.
            </p>
          </>
        )}
      </QueryView>
    </section>
  );
}
