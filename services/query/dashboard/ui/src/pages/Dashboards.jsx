import { useState } from "preact/hooks";
import { api } from "../api.js";
import { DateControls } from "../components/Controls.jsx";
import { ErrorNote, QueryView } from "../components/Status.jsx";
import { defaultInterval, resolveRange } from "../dates.js";
import { can, useQuery, useSession } from "../hooks.js";
import { InsightView, KINDS } from "../insights.jsx";
import { Link, navigate, useLocation } from "../router.jsx";

export function DashboardList({ project }) {
  const session = useSession();
  const list = useQuery(`dash${project}`, () => api("/api/v1/dashboards", { project }));
  const [error, setError] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    try {
      const made = await api("/api/v1/dashboards", {
        method: "POST",
        project,
        body: { name: form.get("name"), description: form.get("description") || "", definition: { tiles: [] } },
      });
      navigate(`/p/${project}/dashboards/${made.id}`);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section>
      <h1>Dashboards</h1>
      {can(session.role, "analyst") && (
        <form class="builder" onSubmit={create} aria-label="New dashboard">
          <label>
            New dashboard <input name="name" required />
          </label>
          <label>
            Description <input name="description" />
          </label>
          <button type="submit">Create dashboard</button>
          <span class="muted">Add insights to it from any builder's “Save insight”.</span>
          {error && <ErrorNote error={error} />}
        </form>
      )}
      <QueryView query={list}>
        {(data) => (
          <ul class="cards">
            {data.dashboards.map((d) => (
              <li>
                <Link href={`/p/${project}/dashboards/${d.id}`}>{d.name}</Link>
                <p class="muted">{d.description || `${d.definition.tiles.length} insights`}</p>
              </li>
            ))}
          </ul>
        )}
      </QueryView>
    </section>
  );
}

function Shares({ project, dashboardId }) {
  const shares = useQuery(`shares${dashboardId}`, () => api(`/api/v1/dashboards/${dashboardId}/shares`, { project }));
  const [error, setError] = useState(null);
  const create = async () => {
    try {
      await api(`/api/v1/dashboards/${dashboardId}/shares`, { method: "POST", project });
      shares.reload();
    } catch (err) {
      setError(err);
    }
  };
  const revoke = async (token) => {
    await api(`/api/v1/shares/${token}`, { method: "DELETE", project });
    shares.reload();
  };
  return (
    <section class="panel" aria-label="Share links">
      <header>
        <h2>Share links</h2>
        <button type="button" onClick={create}>
          Create a read-only link
        </button>
      </header>
      {error && <ErrorNote error={error} />}
      <QueryView query={shares}>
        {(data) =>
          data.shares.length === 0 ? (
            <p class="muted">No link shares this dashboard.</p>
          ) : (
            <ul class="shares">
              {data.shares.map((s) => (
                <li>
                  <input readOnly value={`${location.origin}${s.path}`} aria-label="Share link" data-testid="share-link" size="60" />
                  <button type="button" onClick={() => navigator.clipboard && navigator.clipboard.writeText(`${location.origin}${s.path}`)}>
                    Copy
                  </button>
                  <button type="button" class="danger" onClick={() => revoke(s.token)}>
                    Revoke
                  </button>
                </li>
              ))}
            </ul>
          )
        }
      </QueryView>
    </section>
  );
}

// A dashboard's tiles (its insights) for one range. `shared`: the logged-out view of a link.
export function DashboardTiles({ dashboard, insights, project, range, onRemove }) {
  const byId = new Map(insights.map((i) => [i.id, i]));
  return (
    <div class="tiles">
      {dashboard.definition.tiles.map((tile) => {
        const insight = byId.get(tile.insight_id);
        if (!insight) return null;
        return (
          <section class={`panel tile w${tile.width || 1}`} aria-label={insight.name} data-insight={insight.id}>
            <header>
              <h2>{insight.name}</h2>
              <span class="muted">{KINDS[insight.definition.kind] ? KINDS[insight.definition.kind].label : insight.definition.kind}</span>
              {onRemove && (
                <button type="button" class="link" onClick={() => onRemove(tile.insight_id)}>
                  Remove<span class="sr-only"> {insight.name} from the dashboard</span>
                </button>
              )}
            </header>
            <InsightView insight={insight} range={range} project={project} />
          </section>
        );
      })}
    </div>
  );
}

export function DashboardPage({ project, id }) {
  const session = useSession();
  const { search } = useLocation();
  const range = resolveRange(search, session.projectInfo.timezone);
  range.interval = search.get("interval") || defaultInterval(range);
  const dashboard = useQuery(`d${project}${id}`, () => api(`/api/v1/dashboards/${id}`, { project }));
  const insights = useQuery(`i${project}`, () => api("/api/v1/insights", { project }));
  return (
    <div>
      <QueryView query={dashboard}>
        {(data) => (
          <>
            <div class="toolbar">
              <h1>{data.dashboard.name}</h1>
              <DateControls range={range} interval={range.interval} />
            </div>
            <p class="muted">
              {data.dashboard.description} · version {data.dashboard.version}
            </p>
            <QueryView query={insights}>
              {(list) => (
                <DashboardTiles
                  dashboard={data.dashboard}
                  insights={list.insights}
                  project={project}
                  range={range}
                  onRemove={
                    can(session.role, "analyst")
                      ? async (insightId) => {
                          const d = data.dashboard;
                          const tiles = d.definition.tiles.filter((t) => t.insight_id !== insightId);
                          await api(`/api/v1/dashboards/${id}`, {
                            method: "PUT",
                            project,
                            body: { name: d.name, description: d.description, definition: { tiles } },
                          });
                          dashboard.reload();
                        }
                      : null
                  }
                />
              )}
            </QueryView>
            {can(session.role, "analyst") && <Shares project={project} dashboardId={id} />}
          </>
        )}
      </QueryView>
    </div>
  );
}

export function InsightList({ project }) {
  const session = useSession();
  const { search } = useLocation();
  const range = resolveRange(search, session.projectInfo.timezone);
  const insights = useQuery(`il${project}`, () => api("/api/v1/insights", { project }));
  const [open, setOpen] = useState(null);
  return (
    <section>
      <div class="toolbar">
        <h1>Saved insights</h1>
        <DateControls range={range} interval="day" showInterval={false} />
      </div>
      <QueryView query={insights}>
        {(data) => (
          <ul class="cards">
            {data.insights.map((i) => (
              <li>
                <button type="button" class="link" aria-expanded={open === i.id} onClick={() => setOpen(open === i.id ? null : i.id)}>
                  {i.name}
                </button>
                <span class="muted">
                  {" "}
                  {KINDS[i.definition.kind] ? KINDS[i.definition.kind].label : i.definition.kind} · v{i.version}
                </span>
                {open === i.id && <InsightView insight={i} range={range} project={project} />}
              </li>
            ))}
          </ul>
        )}
      </QueryView>
    </section>
  );
}

// Save the current analysis as an insight, optionally adding it to a dashboard.
export function SaveInsight({ project, definition, defaultName }) {
  const session = useSession();
  const [state, setState] = useState(null);
  const dashboards = useQuery(`sd${project}`, () => api("/api/v1/dashboards", { project }));
  if (!can(session.role, "analyst")) return null;
  const save = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    try {
      const saved = await api("/api/v1/insights", { method: "POST", project, body: { name: form.get("name"), definition } });
      const target = form.get("dashboard");
      if (target) {
        const current = (await api(`/api/v1/dashboards/${target}`, { project })).dashboard;
        await api(`/api/v1/dashboards/${target}`, {
          method: "PUT",
          project,
          body: {
            name: current.name,
            description: current.description,
            definition: { tiles: [...current.definition.tiles, { insight_id: saved.id, width: 1 }] },
          },
        });
      }
      setState({ ok: `Saved “${saved.name}”${target ? " and added it to the dashboard" : ""}.` });
    } catch (err) {
      setState({ error: err });
    }
  };
  return (
    <form class="save-insight" onSubmit={save}>
      <label>
        Insight name <input name="name" defaultValue={defaultName} required />
      </label>
      <label>
        Add to dashboard{" "}
        <select name="dashboard">
          <option value="">(none)</option>
          {dashboards.data &&
            dashboards.data.dashboards.map((d) => (
              <option value={d.id}>{d.name}</option>
            ))}
        </select>
      </label>
      <button type="submit">Save insight</button>
      {state && state.ok && <span role="status">{state.ok}</span>}
      {state && state.error && <ErrorNote error={state.error} />}
    </form>
  );
}
