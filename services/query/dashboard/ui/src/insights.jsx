// Saved insights: how each kind is asked of the API and drawn. The request is the insight's
// stored query plus the date range only, which is exactly what a share link may ask.
import { api } from "./api.js";
import { ExperimentResult, FunnelChart, PathsSankey, RetentionHeatmap } from "./components/AnalysisCharts.jsx";
import { CountryMap } from "./components/CountryMap.jsx";
import { DataTable } from "./components/DataTable.jsx";
import { QueryView } from "./components/Status.jsx";
import { TimeSeries } from "./components/TimeSeries.jsx";
import { defaultInterval } from "./dates.js";
import { formatDuration, formatMetric, formatPercent, metricLabel } from "./format.js";
import { useQuery } from "./hooks.js";

export const KINDS = {
  metrics: { method: "GET", path: "/api/v1/analytics/metrics", label: "Metrics over time" },
  pages: { method: "GET", path: "/api/v1/analytics/pages", label: "Top pages" },
  sources: { method: "GET", path: "/api/v1/analytics/sources", label: "Sources" },
  devices: { method: "GET", path: "/api/v1/analytics/devices", label: "Devices" },
  performance: { method: "GET", path: "/api/v1/analytics/performance", label: "Page performance" },
  funnel: { method: "POST", path: "/api/v1/analytics/funnels", label: "Funnel" },
  retention: { method: "POST", path: "/api/v1/analytics/retention", label: "Retention" },
  paths: { method: "POST", path: "/api/v1/analytics/paths", label: "Paths" },
  experiment: { method: "POST", path: "/api/v1/analytics/experiments/analyze", label: "Experiment" },
};

export function runInsight(definition, range, project) {
  const kind = KINDS[definition.kind];
  if (kind.method === "GET") {
    const query = { ...definition.query, from: range.from, to: range.to };
    if (definition.kind === "metrics" && !query.breakdown) query.interval = range.interval || defaultInterval(range);
    return api(kind.path, { query, project });
  }
  return api(kind.path, { method: "POST", body: { ...definition.query, from: range.from, to: range.to }, project });
}

const DIMENSION_COLUMNS = [
  { label: "Visitors", value: (r) => r.visitors, numeric: true },
  { label: "Pageviews", value: (r) => r.pageviews, numeric: true },
  { label: "Sessions", value: (r) => r.sessions, numeric: true },
  { label: "Bounce rate", value: (r) => r.bounce_rate, format: (v) => formatPercent(v), numeric: true },
  { label: "Session duration", value: (r) => r.avg_session_duration, format: formatDuration, numeric: true },
];

export const PAGE_COLUMNS = [
  { label: "Page", value: (r) => r.page },
  { label: "Pageviews", value: (r) => r.pageviews, numeric: true },
  { label: "Visitors", value: (r) => r.visitors, numeric: true },
  { label: "Entries", value: (r) => r.entries, numeric: true },
  { label: "Bounce rate", value: (r) => r.bounce_rate, format: (v) => formatPercent(v), numeric: true },
  { label: "Time on page", value: (r) => r.avg_time_on_page_s, format: formatDuration, numeric: true },
];

export function dimensionColumns(label) {
  return [{ label, value: (r) => r.value }, ...DIMENSION_COLUMNS];
}

export function InsightResult({ definition, data, name, onFilter, annotations }) {
  const slug = (name || definition.kind).toLowerCase().replace(/[^a-z0-9]+/g, "-");
  switch (definition.kind) {
    case "metrics": {
      if (data.breakdown) {
        const metric = data.metrics[0];
        if ((definition.chart || {}).type === "map") {
          return (
            <>
              <CountryMap rows={data.breakdown.results} metric={metric} onSelect={onFilter && ((c) => onFilter(data.breakdown.dimension, c))} />
              <DataTable
                caption={name || "Breakdown"}
                csvName={slug}
                columns={[{ label: data.breakdown.dimension, value: (r) => r.value }, ...data.metrics.map((m) => ({ label: metricLabel(m), value: (r) => r.totals[m], format: (v) => formatMetric(m, v), numeric: true }))]}
                rows={data.breakdown.results.slice(0, 10)}
                onRowClick={onFilter && ((r) => onFilter(data.breakdown.dimension, r.value))}
                barColumn={{ value: (r) => r.totals[metric] }}
              />
            </>
          );
        }
        return (
          <DataTable
            caption={name || "Breakdown"}
            csvName={slug}
            columns={[{ label: data.breakdown.dimension, value: (r) => r.value }, ...data.metrics.map((m) => ({ label: metricLabel(m), value: (r) => r.totals[m], format: (v) => formatMetric(m, v), numeric: true }))]}
            rows={data.breakdown.results}
            onRowClick={onFilter && ((r) => onFilter(data.breakdown.dimension, r.value))}
            barColumn={{ value: (r) => r.totals[metric] }}
          />
        );
      }
      const shown = (definition.chart || {}).series || data.metrics;
      return (
        <>
          <dl class="totals">
            {data.metrics.map((m) => (
              <div>
                <dt>{metricLabel(m)}</dt>
                <dd>{formatMetric(m, data.totals[m])}</dd>
              </div>
            ))}
          </dl>
          <TimeSeries series={data.series} metrics={shown} annotations={annotations || []} label={name} />
        </>
      );
    }
    case "pages":
      return (
        <DataTable
          caption={name || "Pages"}
          csvName={slug}
          columns={PAGE_COLUMNS}
          rows={data.pages}
          onRowClick={onFilter && ((r) => onFilter("page", r.page))}
          barColumn={{ value: (r) => r.pageviews }}
        />
      );
    case "sources":
    case "devices":
      return (
        <DataTable
          caption={name || data.dimension}
          csvName={slug}
          columns={dimensionColumns(data.dimension)}
          rows={data.results}
          onRowClick={onFilter && ((r) => onFilter(data.dimension, r.value))}
          barColumn={{ value: (r) => r.visitors }}
        />
      );
    case "performance":
      return <PerformanceTable data={data} name={name} />;
    case "funnel":
      return <FunnelChart result={data} />;
    case "retention":
      return <RetentionHeatmap result={data} />;
    case "paths":
      return <PathsSankey result={data} />;
    case "experiment":
      return <ExperimentResult result={data} />;
    default:
      return <p class="muted">Unknown kind {definition.kind}</p>;
  }
}

export function PerformanceTable({ data, name }) {
  const rows = data.properties.map((p) => ({ property: p, ...(data.overall[p] || {}) }));
  const unit = (p, v) => (v === undefined || v === null ? "–" : p === "cls" ? v.toFixed(3) : `${Math.round(v)} ms`);
  return (
    <DataTable
      caption={name || "Web vitals"}
      csvName="performance"
      empty="No performance samples in this range"
      columns={[
        { label: "Measure", value: (r) => r.property },
        { label: "Samples", value: (r) => r.samples, numeric: true },
        { label: "p50", value: (r) => r.p50, format: (v, r) => unit(r.property, v), numeric: true },
        { label: "p75", value: (r) => r.p75, format: (v, r) => unit(r.property, v), numeric: true },
        { label: "p90", value: (r) => r.p90, format: (v, r) => unit(r.property, v), numeric: true },
      ]}
      rows={rows.filter((r) => r.samples)}
    />
  );
}

// One insight fetched for `range` and drawn: a dashboard tile, a shared tile, a saved view.
export function InsightView({ insight, range, project, annotations }) {
  const key = `${insight.id}:${insight.version}:${range.from}:${range.to}:${range.interval || ""}`;
  const query = useQuery(key, () => runInsight(insight.definition, range, project));
  return (
    <QueryView query={query} label={`Loading ${insight.name}`}>
      {(data) => <InsightResult definition={insight.definition} data={data} name={insight.name} annotations={annotations} />}
    </QueryView>
  );
}
