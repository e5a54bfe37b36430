import { useState } from "preact/hooks";
import { api } from "../api.js";
import { ExperimentResult, FunnelChart, PathsSankey, RetentionHeatmap } from "../components/AnalysisCharts.jsx";
import { DateControls, FilterChips } from "../components/Controls.jsx";
import { DataTable } from "../components/DataTable.jsx";
import { ErrorNote, Loading, RestoreProgress } from "../components/Status.jsx";
import { TimeSeries } from "../components/TimeSeries.jsx";
import { defaultInterval, resolveRange } from "../dates.js";
import { formatMetric } from "../format.js";
import { can, useQuery, useSession } from "../hooks.js";
import { Link, useLocation } from "../router.jsx";
import { SaveInsight } from "./Dashboards.jsx";
import { useRangeFilters } from "./shared.js";

// Runs an analysis on demand (a builder's "Run" button), with restore progress in place.
function useRunner() {
  const [run, setRun] = useState(null);
  const query = useQuery(run ? JSON.stringify(run.body) + run.n : "idle", () => (run ? api(run.path, run.request) : Promise.resolve(null)));
  return [query, (path, request, body) => setRun({ path, request, body, n: Date.now() })];
}

function Result({ query, children }) {
  if (query.restore) return <RestoreProgress job={query.restore} />;
  if (query.error) return <ErrorNote error={query.error} />;
  if (query.loading && !query.data) return null;
  if (query.loading) return <Loading />;
  return query.data ? children(query.data) : null;
}

function EventNames({ project }) {
  const names = useQuery(`names${project}`, () =>
    // The event names of the last 90 days, most frequent first, for the inputs' suggestions.
    api("/api/v1/analytics/metrics", {
      project,
      query: { metrics: "events", breakdown: "event", limit: 100, from: new Date(Date.now() - 90 * 86400000).toISOString().slice(0, 10), interval: "month" },
    }),
  );
  return (
    <datalist id="event-names">
      {names.data && names.data.breakdown.results.map((r) => <option value={r.value} />)}
    </datalist>
  );
}

export function Funnels({ project }) {
  const { range, filters, timezone } = useRangeFilters();
  const [steps, setSteps] = useState([
    { event: "$pageview", path: "" },
    { event: "signup", path: "" },
  ]);
  const [order, setOrder] = useState("ordered");
  const [windowDays, setWindowDays] = useState(7);
  const [breakdown, setBreakdown] = useState("");
  const [persons, setPersons] = useState(null);
  const [query, runQuery] = useRunner();
  const body = {
    steps: steps.map((s) => (s.path ? { event: s.event, conditions: [{ property: "path", value: s.path }] } : { event: s.event })),
    order,
    window: { value: Number(windowDays), unit: "day" },
    ...(breakdown ? { breakdown } : {}),
    ...(filters.length ? { filters } : {}),
  };
  const run = (e) => {
    e.preventDefault();
    setPersons(null);
    runQuery("/api/v1/analytics/funnels", { method: "POST", project, body: { ...body, from: range.from, to: range.to, timezone } }, body);
  };
  const showPersons = async (step) => {
    const answer = await api("/api/v1/analytics/funnels", {
      method: "POST",
      project,
      body: { ...body, from: range.from, to: range.to, timezone, persons: { step, status: "converted", limit: 50 } },
    });
    setPersons({ step, ids: answer.persons.person_ids });
  };
  const update = (i, field, value) => setSteps(steps.map((s, j) => (j === i ? { ...s, [field]: value } : s)));
  return (
    <section>
      <div class="toolbar">
        <h1>Funnels</h1>
        <DateControls range={range} showInterval={false} />
      </div>
      <FilterChips filters={filters} />
      <EventNames project={project} />
      <form class="builder" onSubmit={run} aria-label="Funnel builder">
        <fieldset>
          <legend>Steps</legend>
          <ol>
            {steps.map((s, i) => (
              <li>
                <label>
                  Step {i + 1} event <input list="event-names" value={s.event} onInput={(e) => update(i, "event", e.currentTarget.value)} required name={`step-${i + 1}`} />
                </label>
                <label>
                  on page <input value={s.path} placeholder="any" onInput={(e) => update(i, "path", e.currentTarget.value)} size="12" />
                </label>
                {steps.length > 2 && (
                  <button type="button" class="link" onClick={() => setSteps(steps.filter((_, j) => j !== i))}>
                    Remove<span class="sr-only"> step {i + 1}</span>
                  </button>
                )}
              </li>
            ))}
          </ol>
          <button type="button" onClick={() => setSteps([...steps, { event: "", path: "" }])}>
            Add step
          </button>
        </fieldset>
        <label>
          Order{" "}
          <select value={order} onChange={(e) => setOrder(e.currentTarget.value)}>
            <option value="ordered">in order (others between allowed)</option>
            <option value="strict">strictly in a row</option>
            <option value="unordered">any order</option>
          </select>
        </label>
        <label>
          Window (days) <input type="number" min="1" max="90" value={windowDays} onInput={(e) => setWindowDays(e.currentTarget.value)} />
        </label>
        <label>
          Breakdown by <input value={breakdown} placeholder="e.g. country or plan" onInput={(e) => setBreakdown(e.currentTarget.value)} size="14" />
        </label>
        <button type="submit" class="primary">
          Run funnel
        </button>
      </form>
      <Result query={query}>
        {(data) => (
          <>
            <FunnelChart result={data} onPersons={showPersons} />
            {data.breakdown && (
              <DataTable
                caption={`By ${data.breakdown.property}`}
                csvName="funnel-breakdown"
                columns={[
                  { label: data.breakdown.property, value: (b) => b.value },
                  ...data.steps.map((s, k) => ({ label: `Step ${k + 1}`, value: (b) => b.steps[k].count, numeric: true })),
                ]}
                rows={data.breakdown.values}
              />
            )}
            {persons && (
              <section class="panel" aria-label="Persons">
                <h2>Persons who reached step {persons.step}</h2>
                <ul class="persons">
                  {persons.ids.map((id) => (
                    <li>
                      <Link href={`/p/${project}/persons/${encodeURIComponent(id)}`}>{id}</Link>
                    </li>
                  ))}
                </ul>
              </section>
            )}
            <SaveInsight project={project} definition={{ kind: "funnel", query: body, chart: { type: "funnel" } }} defaultName="Funnel" />
          </>
        )}
      </Result>
    </section>
  );
}

export function Retention({ project }) {
  const { range, filters, timezone } = useRangeFilters();
  const [start, setStart] = useState("$pageview");
  const [back, setBack] = useState("$pageview");
  const [period, setPeriod] = useState("week");
  const [intervals, setIntervals] = useState(6);
  const [query, runQuery] = useRunner();
  const body = { start_event: { event: start }, return_event: { event: back }, period, intervals: Number(intervals), ...(filters.length ? { filters } : {}) };
  return (
    <section>
      <div class="toolbar">
        <h1>Retention</h1>
        <DateControls range={range} showInterval={false} />
      </div>
      <EventNames project={project} />
      <form
        class="builder"
        aria-label="Retention builder"
        onSubmit={(e) => {
          e.preventDefault();
          runQuery("/api/v1/analytics/retention", { method: "POST", project, body: { ...body, from: range.from, to: range.to, timezone } }, body);
        }}
      >
        <label>
          First event <input list="event-names" value={start} onInput={(e) => setStart(e.currentTarget.value)} required />
        </label>
        <label>
          Coming back with <input list="event-names" value={back} onInput={(e) => setBack(e.currentTarget.value)} required />
        </label>
        <label>
          Period{" "}
          <select value={period} onChange={(e) => setPeriod(e.currentTarget.value)}>
            {["day", "week", "month"].map((p) => (
              <option value={p}>{p}</option>
            ))}
          </select>
        </label>
        <label>
          Periods <input type="number" min="1" max="30" value={intervals} onInput={(e) => setIntervals(e.currentTarget.value)} />
        </label>
        <button type="submit" class="primary">
          Run retention
        </button>
      </form>
      <Result query={query}>
        {(data) => (
          <>
            <RetentionHeatmap result={data} />
            <SaveInsight project={project} definition={{ kind: "retention", query: body, chart: { type: "heatmap" } }} defaultName="Retention" />
          </>
        )}
      </Result>
    </section>
  );
}

export function Paths({ project }) {
  const { range, filters, timezone } = useRangeFilters();
  const [startPoint, setStartPoint] = useState("/");
  const [steps, setSteps] = useState(4);
  const [query, runQuery] = useRunner();
  const body = { steps: Number(steps), edge_limit: 40, ...(startPoint ? { start_point: startPoint } : {}), ...(filters.length ? { filters } : {}) };
  return (
    <section>
      <div class="toolbar">
        <h1>Paths</h1>
        <DateControls range={range} showInterval={false} />
      </div>
      <form
        class="builder"
        aria-label="Paths builder"
        onSubmit={(e) => {
          e.preventDefault();
          runQuery("/api/v1/analytics/paths", { method: "POST", project, body: { ...body, from: range.from, to: range.to, timezone } }, body);
        }}
      >
        <label>
          Starting at page <input value={startPoint} placeholder="any" onInput={(e) => setStartPoint(e.currentTarget.value)} />
        </label>
        <label>
          Steps <input type="number" min="2" max="10" value={steps} onInput={(e) => setSteps(e.currentTarget.value)} />
        </label>
        <button type="submit" class="primary">
          Show paths
        </button>
      </form>
      <Result query={query}>
        {(data) => (
          <>
            <p class="muted">
              {data.sessions} sessions by {data.persons} persons.
            </p>
            <PathsSankey result={data} />
            <SaveInsight project={project} definition={{ kind: "paths", query: body, chart: { type: "sankey" } }} defaultName="Paths" />
          </>
        )}
      </Result>
    </section>
  );
}

export function Cohorts({ project }) {
  const session = useSession();
  const cohorts = useQuery(`co${project}`, () => api("/api/v1/analytics/cohorts", { project }));
  const [error, setError] = useState(null);
  const [members, setMembers] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    setError(null);
    try {
      await api("/api/v1/analytics/cohorts", {
        method: "POST",
        project,
        body: {
          name: form.get("name"),
          definition: { type: "behavioral", event: form.get("event"), min_count: Number(form.get("min_count")), last_days: Number(form.get("last_days")) },
        },
      });
      cohorts.reload();
      e.currentTarget.reset();
    } catch (err) {
      setError(err);
    }
  };
  const show = async (id) => setMembers({ id, ...(await api(`/api/v1/analytics/cohorts/${id}/persons`, { project, query: { limit: 50 } })) });
  return (
    <section>
      <h1>Cohorts</h1>
      <EventNames project={project} />
      {cohorts.error && <ErrorNote error={cohorts.error} />}
      {cohorts.data && (
        <DataTable
          caption="Saved cohorts"
          csvName="cohorts"
          columns={[
            { label: "Cohort", value: (c) => c.name },
            { label: "Type", value: (c) => c.definition.type },
            { label: "Version", value: (c) => c.version, numeric: true },
            { label: "Id", value: (c) => c.id },
          ]}
          rows={cohorts.data.cohorts}
          onRowClick={(c) => show(c.id)}
        />
      )}
      {members && (
        <section class="panel" aria-label="Cohort members">
          <h2>Persons in {members.id} (first {members.person_ids.length})</h2>
          <ul class="persons">
            {members.person_ids.map((id) => (
              <li>
                <Link href={`/p/${project}/persons/${encodeURIComponent(id)}`}>{id}</Link>
              </li>
            ))}
          </ul>
        </section>
      )}
      {can(session.role, "analyst") && (
        <form class="builder" onSubmit={create} aria-label="New cohort">
          <h2>New behavioural cohort</h2>
          <label>
            Name <input name="name" required />
          </label>
          <label>
            Persons who did <input name="event" list="event-names" required />
          </label>
          <label>
            at least <input name="min_count" type="number" min="1" defaultValue="1" /> times
          </label>
          <label>
            in the last <input name="last_days" type="number" min="1" defaultValue="30" /> days
          </label>
          <button type="submit" class="primary">
            Save cohort
          </button>
          {error && <ErrorNote error={error} />}
        </form>
      )}
    </section>
  );
}

export function CustomMetrics({ project }) {
  const session = useSession();
  const { range, filters, timezone } = useRangeFilters();
  const interval = defaultInterval(range);
  const list = useQuery(`md${project}`, () => api("/api/v1/analytics/metric-definitions", { project }));
  const [chosen, setChosen] = useState(null);
  const [error, setError] = useState(null);
  const series = useQuery(`ms${chosen}${range.from}${range.to}${filters}`, () =>
    chosen
      ? api("/api/v1/analytics/metrics", { project, query: { metrics: `metric:${chosen}`, from: range.from, to: range.to, timezone, interval, filter: filters } })
      : Promise.resolve(null),
  );
  const create = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const kind = form.get("kind");
    const definition = { kind, event: form.get("event") };
    if (!["count", "unique_persons"].includes(kind)) definition.property = form.get("property");
    try {
      const saved = await api("/api/v1/analytics/metric-definitions", { method: "POST", project, body: { name: form.get("name"), definition } });
      list.reload();
      setChosen(saved.id);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section>
      <div class="toolbar">
        <h1>Custom metrics</h1>
        <DateControls range={range} showInterval={false} />
      </div>
      <EventNames project={project} />
      {list.data && (
        <DataTable
          caption="Saved metrics"
          columns={[
            { label: "Metric", value: (m) => m.name },
            { label: "Kind", value: (m) => m.definition.kind || "ratio" },
            { label: "Event", value: (m) => m.definition.event || "" },
          ]}
          rows={list.data.metric_definitions}
          onRowClick={(m) => setChosen(m.id)}
        />
      )}
      {chosen && series.data && (
        <section class="panel wide" aria-label="Metric over time">
          <h2>
            {chosen}: {formatMetric("", series.data.totals[`metric:${chosen}`])} in total
          </h2>
          <TimeSeries series={series.data.series} metrics={[`metric:${chosen}`]} />
          <SaveInsight project={project} definition={{ kind: "metrics", query: { metrics: `metric:${chosen}` }, chart: { type: "line" } }} defaultName={chosen} />
        </section>
      )}
      {series.error && <ErrorNote error={series.error} />}
      {can(session.role, "analyst") && (
        <form class="builder" onSubmit={create} aria-label="New custom metric">
          <h2>New metric</h2>
          <label>
            Name <input name="name" required />
          </label>
          <label>
            Kind{" "}
            <select name="kind">
              {["count", "unique_persons", "sum", "avg", "p50", "p90"].map((k) => (
                <option value={k}>{k}</option>
              ))}
            </select>
          </label>
          <label>
            of event <input name="event" list="event-names" required />
          </label>
          <label>
            property (sum, avg, percentiles) <input name="property" placeholder="revenue" />
          </label>
          <button type="submit" class="primary">
            Save metric
          </button>
          {error && <ErrorNote error={error} />}
        </form>
      )}
    </section>
  );
}

export function Experiments({ project }) {
  const { range, timezone } = useRangeFilters();
  const [query, runQuery] = useRunner();
  const [body, setBody] = useState(null);
  const run = (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const variants = String(form.get("variants")).split(",").map((v) => v.trim()).filter(Boolean);
    const next = {
      experiment: form.get("experiment"),
      control: form.get("control"),
      ...(variants.length ? { variants } : {}),
      goal: { funnel: { steps: [{ event: form.get("goal") }] } },
    };
    setBody(next);
    runQuery("/api/v1/analytics/experiments/analyze", { method: "POST", project, body: { ...next, from: range.from, to: range.to, timezone } }, next);
  };
  return (
    <section>
      <div class="toolbar">
        <h1>Experiments</h1>
        <DateControls range={range} showInterval={false} />
      </div>
      <EventNames project={project} />
      <p class="muted">
        Exposures are <code>$experiment_exposure</code> events with <code>experiment</code> and <code>variant</code> properties; the goal is
        converting with an event after exposure.
      </p>
      <form class="builder" onSubmit={run} aria-label="Experiment">
        <label>
          Experiment key <input name="experiment" required />
        </label>
        <label>
          Control variant <input name="control" defaultValue="control" required />
        </label>
        <label>
          Variants (comma-separated, optional) <input name="variants" placeholder="control,test" />
        </label>
        <label>
          Goal event <input name="goal" list="event-names" defaultValue="signup" required />
        </label>
        <button type="submit" class="primary">
          Analyse
        </button>
      </form>
      <Result query={query}>
        {(data) => (
          <>
            <ExperimentResult result={data} />
            {body && <SaveInsight project={project} definition={{ kind: "experiment", query: body }} defaultName={`Experiment ${body.experiment}`} />}
          </>
        )}
      </Result>
    </section>
  );
}

export { useRangeFilters };
