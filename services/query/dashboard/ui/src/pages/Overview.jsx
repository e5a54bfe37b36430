import { useEffect, useState } from "preact/hooks";
import { api } from "../api.js";
import { CountryMap } from "../components/CountryMap.jsx";
import { addFilter, DateControls, FilterChips } from "../components/Controls.jsx";
import { DataTable } from "../components/DataTable.jsx";
import { QueryView } from "../components/Status.jsx";
import { TimeSeries } from "../components/TimeSeries.jsx";
import { defaultInterval, previousPeriod, resolveRange } from "../dates.js";
import { formatMetric, LOWER_IS_BETTER, metricLabel } from "../format.js";
import { can, useQuery, useSession } from "../hooks.js";
import { dimensionColumns, PAGE_COLUMNS, PerformanceTable } from "../insights.jsx";
import { setQuery, useLocation } from "../router.jsx";

const KPIS = ["visitors", "pageviews", "sessions", "views_per_session", "bounce_rate", "avg_session_duration", "events"];

function Change({ metric, now, before }) {
  if (now === null || now === undefined || !before) return <span class="change muted">no earlier data</span>;
  const ratio = (now - before) / Math.abs(before);
  const better = LOWER_IS_BETTER.has(metric) ? ratio < 0 : ratio > 0;
  const cls = Math.abs(ratio) < 0.005 ? "flat" : better ? "up" : "down";
  return (
    <span class={`change ${cls}`}>
      {ratio > 0 ? "▲" : ratio < 0 ? "▼" : "■"} {(Math.abs(ratio) * 100).toFixed(1)}%
      <span class="sr-only"> against the previous period</span>
    </span>
  );
}

function Realtime({ project }) {
  const [live, setLive] = useState(null);
  useEffect(() => {
    const source = new EventSource(`/api/v1/analytics/stream/metrics?project=${encodeURIComponent(project)}`);
    source.addEventListener("metrics", (e) => setLive(JSON.parse(e.data)));
    return () => source.close();
  }, [project]);
  return (
    <p class="realtime" aria-live="off" data-testid="realtime">
      <span class="dot live" aria-hidden="true" />
      {live ? (
        <>
          <strong>{live.active_visitors}</strong> visitors in the last 5 minutes · <strong>{live.events_per_minute}</strong> events per minute
        </>
      ) : (
        "Connecting to the live stream…"
      )}
    </p>
  );
}

function Panel({ title, tabs, tab, onTab, children }) {
  return (
    <section class="panel" aria-label={title}>
      <header>
        <h2>{title}</h2>
        {tabs && (
          <div role="tablist" aria-label={`${title} views`}>
            {tabs.map(([key, label]) => (
              <button type="button" role="tab" aria-selected={tab === key} class={tab === key ? "tab active" : "tab"} onClick={() => onTab(key)}>
                {label}
              </button>
            ))}
          </div>
        )}
      </header>
      {children}
    </section>
  );
}

export function Overview({ project }) {
  const { search } = useLocation();
  const session = useSession();
  const tz = session.projectInfo.timezone;
  const range = resolveRange(search, tz);
  const interval = search.get("interval") || defaultInterval(range);
  const filters = search.getAll("filter");
  const goals = (search.get("goals") || "").split(",").filter(Boolean);
  const [chartMetric, setChartMetric] = useState("visitors");
  const [sourceTab, setSourceTab] = useState("channel");
  const [deviceTab, setDeviceTab] = useState("browser");
  const [pageTab, setPageTab] = useState("pages");
  const [mapView, setMapView] = useState(true);
  const common = { from: range.from, to: range.to, timezone: tz, filter: filters };
  const metrics = [...KPIS, ...goals.map((g) => `event:${g}`)].join(",");
  const key = JSON.stringify([project, range, interval, filters, goals]);
  const current = useQuery(`cur${key}`, () => api("/api/v1/analytics/metrics", { project, query: { ...common, metrics, interval } }));
  const prev = previousPeriod(range);
  const previous = useQuery(`prev${key}`, () =>
    api("/api/v1/analytics/metrics", { project, query: { ...common, ...prev, metrics, interval } }),
  );
  const pages = useQuery(`pages${key}`, () => api("/api/v1/analytics/pages", { project, query: { ...common, limit: 50 } }));
  // Exit pages: sessions by the page they ended on (asked for only when that tab is open).
  const exits = useQuery(`exits${key}${pageTab}`, () =>
    pageTab === "exits"
      ? api("/api/v1/analytics/metrics", { project, query: { ...common, metrics: "sessions,bounce_rate", breakdown: "exit_page", limit: 10 } })
      : Promise.resolve(null),
  );
  const sources = useQuery(`src${key}${sourceTab}`, () => api("/api/v1/analytics/sources", { project, query: { ...common, by: sourceTab, limit: 20 } }));
  const devices = useQuery(`dev${key}${deviceTab}`, () => api("/api/v1/analytics/devices", { project, query: { ...common, by: deviceTab, limit: 20 } }));
  const countries = useQuery(`geo${key}`, () =>
    api("/api/v1/analytics/metrics", { project, query: { ...common, metrics: "visitors", breakdown: "country", limit: 250 } }),
  );
  const vitals = useQuery(`perf${key}`, () => api("/api/v1/analytics/performance", { project, query: { ...common, limit: 10 } }));
  const annotations = useQuery(`ann${key}`, () => api("/api/v1/annotations", { project, query: { from: range.from, to: range.to, timezone: tz } }));
  const onFilter = (dimension, value) => addFilter(filters, dimension, value);
  // Interactive: the key figures with their change, the chart and the tables a visitor sees
  // first hold their data. Complete: the web vitals (raw percentiles, below the fold) too.
  const ready = [current, previous, pages, sources, devices, countries].every((q) => q.data || q.error);
  const complete = ready && (vitals.data || vitals.error);
  const [goalDraft, setGoalDraft] = useState("");

  const addAnnotation = async () => {
    const text = window.prompt("Annotation text (shown on the time charts)");
    if (!text) return;
    const at = window.prompt("Date (YYYY-MM-DD)", range.to);
    if (!at) return;
    await api("/api/v1/annotations", { method: "POST", project, body: { at, text }, query: { timezone: tz } });
    annotations.reload();
  };

  return (
    <div class="overview" data-ready={ready ? "true" : "false"} data-complete={complete ? "true" : "false"} data-testid="overview">
      <div class="toolbar">
        <h1>Overview</h1>
        <DateControls range={range} interval={interval} />
      </div>
      <FilterChips filters={filters} />
      <Realtime project={project} />
      <QueryView query={current} label="Loading the key figures">
        {(data) => (
          <>
            <ul class="kpis" aria-label="Key figures">
              {data.metrics.map((m) => (
                <li>
                  <button
                    type="button"
                    class={chartMetric === m ? "kpi selected" : "kpi"}
                    aria-pressed={chartMetric === m}
                    onClick={() => setChartMetric(m)}
                    data-metric={m}
                  >
                    <span class="kpi-label">{m.startsWith("event:") ? `Conversions: ${m.slice(6)}` : metricLabel(m)}</span>
                    <span class="kpi-value" data-testid={`kpi-${m}`} data-value={data.totals[m] === null ? "" : String(data.totals[m])}>
                      {formatMetric(m, data.totals[m])}
                    </span>
                    {previous.data && <Change metric={m} now={data.totals[m]} before={previous.data.totals[m]} />}
                  </button>
                </li>
              ))}
              <li class="goal-form">
                <form
                  onSubmit={(e) => {
                    e.preventDefault();
                    if (goalDraft.trim()) setQuery({ goals: [...goals, goalDraft.trim()].join(",") });
                    setGoalDraft("");
                  }}
                >
                  <label>
                    Goal event <input value={goalDraft} onInput={(e) => setGoalDraft(e.currentTarget.value)} placeholder="signup" size="10" />
                  </label>
                  <button type="submit">Add goal</button>
                </form>
              </li>
            </ul>
            <section class="panel wide" aria-label="Over time">
              <header>
                <h2>{metricLabel(chartMetric)} over time</h2>
                {can(session.role, "analyst") && (
                  <button type="button" class="link" onClick={addAnnotation}>
                    Add annotation
                  </button>
                )}
              </header>
              <TimeSeries series={data.series} metrics={[chartMetric]} annotations={(annotations.data && annotations.data.annotations) || []} />
            </section>
          </>
        )}
      </QueryView>
      <div class="grid">
        <Panel
          title="Pages"
          tabs={[
            ["pages", "Top pages"],
            ["entries", "Entry pages"],
            ["exits", "Exit pages"],
          ]}
          tab={pageTab}
          onTab={setPageTab}
        >
          {pageTab === "exits" ? (
            <QueryView query={exits}>
              {(data) =>
                data && (
                  <DataTable
                    caption="Exit pages"
                    csvName="exit-pages"
                    columns={[
                      { label: "Exit page", value: (r) => r.value },
                      { label: "Sessions", value: (r) => r.totals.sessions, numeric: true },
                      { label: "Bounce rate", value: (r) => r.totals.bounce_rate, format: (v) => formatMetric("bounce_rate", v), numeric: true },
                    ]}
                    rows={data.breakdown.results}
                    barColumn={{ value: (r) => r.totals.sessions }}
                  />
                )
              }
            </QueryView>
          ) : (
          <QueryView query={pages}>
            {(data) => (
              <DataTable
                caption={pageTab === "pages" ? "Top pages" : "Entry pages"}
                csvName={pageTab === "pages" ? "top-pages" : "entry-pages"}
                columns={PAGE_COLUMNS}
                rows={pageTab === "pages" ? data.pages.slice(0, 10) : [...data.pages].filter((p) => p.entries > 0).sort((a, b) => b.entries - a.entries).slice(0, 10)}
                onRowClick={(r) => onFilter("page", r.page)}
                barColumn={{ value: (r) => (pageTab === "pages" ? r.pageviews : r.entries) }}
              />
            )}
          </QueryView>
          )}
        </Panel>
        <Panel
          title="Sources"
          tabs={[
            ["channel", "Channels"],
            ["referrer_domain", "Referrers"],
            ["utm_source", "UTM source"],
            ["utm_medium", "UTM medium"],
            ["utm_campaign", "UTM campaign"],
          ]}
          tab={sourceTab}
          onTab={setSourceTab}
        >
          <QueryView query={sources}>
            {(data) => (
              <DataTable
                caption={`Visitors by ${data.dimension}`}
                csvName={data.dimension}
                columns={dimensionColumns(data.dimension)}
                rows={data.results.slice(0, 10)}
                onRowClick={(r) => onFilter(data.dimension, r.value)}
                barColumn={{ value: (r) => r.visitors }}
              />
            )}
          </QueryView>
        </Panel>
        <Panel
          title="Devices"
          tabs={[
            ["browser", "Browsers"],
            ["os", "Operating systems"],
            ["device_type", "Device types"],
          ]}
          tab={deviceTab}
          onTab={setDeviceTab}
        >
          <QueryView query={devices}>
            {(data) => (
              <DataTable
                caption={`Visitors by ${data.dimension}`}
                csvName={data.dimension}
                columns={dimensionColumns(data.dimension)}
                rows={data.results.slice(0, 10)}
                onRowClick={(r) => onFilter(data.dimension, r.value)}
                barColumn={{ value: (r) => r.visitors }}
              />
            )}
          </QueryView>
        </Panel>
        <Panel
          title="Countries"
          tabs={[
            ["map", "Map"],
            ["table", "Table"],
          ]}
          tab={mapView ? "map" : "table"}
          onTab={(t) => setMapView(t === "map")}
        >
          <QueryView query={countries}>
            {(data) =>
              mapView ? (
                <CountryMap rows={data.breakdown.results} onSelect={(c) => onFilter("country", c)} />
              ) : (
                <DataTable
                  caption="Visitors by country"
                  csvName="countries"
                  columns={[
                    { label: "Country", value: (r) => r.value },
                    { label: "Visitors", value: (r) => r.totals.visitors, numeric: true },
                  ]}
                  rows={data.breakdown.results.slice(0, 15)}
                  onRowClick={(r) => onFilter("country", r.value)}
                  barColumn={{ value: (r) => r.totals.visitors }}
                />
              )
            }
          </QueryView>
        </Panel>
        <Panel title="Web vitals">
          <QueryView query={vitals}>{(data) => <PerformanceTable data={data} name="Web vitals (all pages)" />}</QueryView>
        </Panel>
      </div>
    </div>
  );
}
