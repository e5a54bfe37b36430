import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api, setCsrf, setShare } from "./api.js";
import { DateControls } from "./components/Controls.jsx";
import { ErrorNote, Freshness, Loading, QueryView } from "./components/Status.jsx";
import { defaultInterval, resolveRange } from "./dates.js";
import { can, Session, useInterval, useQuery } from "./hooks.js";
import { AcceptInvite, Account, Login } from "./pages/Auth.jsx";
import { DashboardList, DashboardPage, DashboardTiles, InsightList } from "./pages/Dashboards.jsx";
import { Events, Person, Tiers } from "./pages/Explore.jsx";
import { Overview } from "./pages/Overview.jsx";
import { Cohorts, CustomMetrics, Experiments, Funnels, Paths, Retention } from "./pages/Product.jsx";
import { Settings, Setup } from "./pages/Admin.jsx";
import { Link, match, navigate, useLocation } from "./router.jsx";

const NAV = [
  ["overview", "Overview"],
  ["dashboards", "Dashboards"],
  ["insights", "Insights"],
  ["funnels", "Funnels"],
  ["retention", "Retention"],
  ["paths", "Paths"],
  ["cohorts", "Cohorts"],
  ["metrics", "Custom metrics"],
  ["experiments", "Experiments"],
  ["events", "Events"],
  ["tiers", "Storage"],
  ["setup", "Setup"],
  ["settings", "Settings"],
];

const PAGES = [
  ["overview", Overview],
  ["dashboards", DashboardList],
  ["dashboards/:id", DashboardPage],
  ["insights", InsightList],
  ["funnels", Funnels],
  ["retention", Retention],
  ["paths", Paths],
  ["cohorts", Cohorts],
  ["metrics", CustomMetrics],
  ["experiments", Experiments],
  ["events", Events],
  ["persons/:id", Person],
  ["tiers", Tiers],
  ["setup", Setup],
  ["settings", Settings],
];

function Layout({ me, project, section, onSignOut, children }) {
  const info = me.projects.find((p) => p.id === project);
  const status = useQuery(`status${project}`, () => api("/api/v1/project/status", { project }));
  useInterval(() => status.reload(), 30000);
  const keep = location.search;
  return (
    <Session.Provider value={{ me, project, role: info.role, projectInfo: info }}>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <Link href={`/p/${project}/overview`} class="brand">
          Strata
        </Link>
        <label class="project-switch">
          <span class="sr-only">Project</span>
          <select value={project} onChange={(e) => navigate(`/p/${e.currentTarget.value}/${section}`)}>
            {me.projects.map((p) => (
              <option value={p.id}>{p.name}</option>
            ))}
          </select>
        </label>
        <Freshness status={status.data} />
        <span class="role" data-testid="role">
          {info.role}
        </span>
        <Link href="/account">{me.user.email}</Link>
        <button type="button" class="link" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <div class="body">
        <nav aria-label="Pages">
          <ul>
            {NAV.map(([key, label]) => (
              <li>
                <Link
                  href={`/p/${project}/${key}${["overview", "funnels", "retention", "paths", "metrics", "experiments"].includes(key) ? keep : ""}`}
                  aria-current={section === key ? "page" : undefined}
                >
                  {label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <main id="main" tabIndex={-1}>
          {children}
        </main>
      </div>
    </Session.Provider>
  );
}

function Shared({ token }) {
  setShare(token);
  const { search } = useLocation();
  const shared = useQuery(`share${token}`, () => api(`/api/v1/shared/${encodeURIComponent(token)}`));
  return (
    <main id="main" class="shared">
      <QueryView query={shared} label="Loading the shared dashboard">
        {(data) => {
          const range = resolveRange(search, data.project.timezone || "UTC");
          range.interval = search.get("interval") || defaultInterval(range);
          return (
            <Session.Provider value={{ me: null, project: data.project.id, role: "viewer", projectInfo: data.project }}>
              <div class="toolbar">
                <h1>
                  {data.project.name}: {data.dashboard.name}
                </h1>
                <DateControls range={range} interval={range.interval} />
              </div>
              <p class="muted">A read-only dashboard shared from Strata.</p>
              <DashboardTiles dashboard={data.dashboard} insights={data.insights} project={data.project.id} range={range} />
            </Session.Provider>
          );
        }}
      </QueryView>
    </main>
  );
}

// Navigation after the render (listeners are attached by then).
function Redirect({ to }) {
  useEffect(() => navigate(to, { replace: true }), [to]);
  return null;
}

function App() {
  const { path } = useLocation();
  const [me, setMe] = useState(undefined);
  useEffect(() => {
    if (path.startsWith("/share/") || path.startsWith("/invite/")) return;
    api("/api/v1/auth/me").then(
      (body) => {
        setCsrf(body.csrf_token);
        setMe(body);
      },
      () => setMe(null),
    );
  }, []);
  const share = match("/share/:token", path);
  if (share) return <Shared token={share.token} />;
  const invite = match("/invite/:token", path);
  if (invite) return <AcceptInvite token={invite.token} onSignedIn={setMe} />;
  if (path === "/login") return <Login onSignedIn={setMe} />;
  if (me === undefined) return <Loading label="Loading Strata" />;
  if (me === null || !me.user) {
    return <Redirect to={`/login?next=${encodeURIComponent(location.pathname + location.search)}`} />;
  }
  const signOut = async () => {
    await api("/api/v1/auth/logout", { method: "POST" });
    setMe(null);
    navigate("/login", { replace: true });
  };
  if (me.projects.length === 0) {
    return (
      <main id="main" class="auth">
        <h1>No project yet</h1>
        <p>You are not a member of any project: ask an admin to add you.</p>
        <button type="button" onClick={signOut}>
          Sign out
        </button>
      </main>
    );
  }
  if (path === "/" || path === "") return <Redirect to={`/p/${me.projects[0].id}/overview`} />;
  if (path === "/account") {
    return (
      <Layout me={me} project={me.projects[0].id} section="overview" onSignOut={signOut}>
        <Account me={me} onSignedIn={setMe} />
      </Layout>
    );
  }
  const parts = path.split("/");
  const project = parts[2];
  const rest = parts.slice(3).join("/");
  if (!me.projects.some((p) => p.id === project)) {
    return (
      <main id="main" class="auth">
        <h1>Not found</h1>
        <ErrorNote error={{ message: `You are not a member of a project "${project}".` }} />
        <Link href="/">Back to your projects</Link>
      </main>
    );
  }
  for (const [pattern, Page] of PAGES) {
    const params = match(pattern, rest);
    if (params) {
      return (
        <Layout me={me} project={project} section={pattern.split("/")[0]} onSignOut={signOut}>
          <Page project={project} {...params} key={`${project}/${rest}`} />
        </Layout>
      );
    }
  }
  return (
    <Layout me={me} project={project} section="" onSignOut={signOut}>
      <h1>Not found</h1>
    </Layout>
  );
}

render(<App />, document.getElementById("app"));
export { can };
