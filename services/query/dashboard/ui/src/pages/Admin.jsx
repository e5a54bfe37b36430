import { useState } from "preact/hooks";
import { api } from "../api.js";
import { DataTable } from "../components/DataTable.jsx";
import { ErrorNote, QueryView } from "../components/Status.jsx";
import { formatTime } from "../format.js";
import { can, useInterval, useQuery, useSession } from "../hooks.js";

function CopyButton({ text, label = "Copy" }) {
  const [done, setDone] = useState(false);
  return (
    <button
      type="button"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
          setDone(true);
        } catch (_) {
          setDone(false);
        }
      }}
    >
      {done ? "Copied" : label}
    </button>
  );
}

// The tracking snippet, whether events arrive, and a write key for the snippet (admins).
export function Setup({ project }) {
  const session = useSession();
  const status = useQuery(`st${project}`, () => api("/api/v1/project/status", { project }));
  const [writeKey, setWriteKey] = useState(null);
  const [error, setError] = useState(null);
  useInterval(() => status.reload(), status.data && !status.data.has_events ? 3000 : 0);
  const ingest = (status.data && status.data.ingest_url) || "https://ingest.example.com";
  const snippet = `<script src="${ingest}/t.js" data-write-key="${writeKey || "WRITE_KEY"}" defer></script>`;
  const createKey = async () => {
    try {
      const created = await api("/api/v1/keys", { method: "POST", project, body: { role: "write", name: "tracking snippet" } });
      setWriteKey(created.secret);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section>
      <h1>Set up tracking</h1>
      <p>Put this tag in the &lt;head&gt; of every page of the site (see docs/tracker.md for its options):</p>
      <pre class="snippet">
        <code data-testid="snippet">{snippet}</code>
      </pre>
      <CopyButton text={snippet} label="Copy snippet" />
      {!writeKey && can(session.role, "admin") && (
        <button type="button" onClick={createKey}>
          Create a write key for it
        </button>
      )}
      {writeKey && <p role="status">A new write key is in the snippet; it is shown only now.</p>}
      {error && <ErrorNote error={error} />}
      <h2>Are events arriving?</h2>
      <QueryView query={status}>
        {(s) =>
          s.has_events ? (
            <p class="ok" data-testid="first-event">
              ✓ Events are arriving: the first was seen on {s.first_event_day}, the newest at {formatTime(s.last_event_at)}.
            </p>
          ) : (
            <p class="waiting" role="status">
              Waiting for the first event… this page checks every few seconds.
            </p>
          )
        }
      </QueryView>
    </section>
  );
}

function Members({ project }) {
  const members = useQuery(`mem${project}`, () => api("/api/v1/members", { project }));
  const [message, setMessage] = useState(null);
  const [error, setError] = useState(null);
  const act = async (fn) => {
    setError(null);
    try {
      await fn();
      members.reload();
    } catch (err) {
      setError(err);
    }
  };
  const invite = (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    act(async () => {
      const answer = await api("/api/v1/members", { method: "POST", project, body: { email: form.get("email"), role: form.get("role") } });
      setMessage(
        answer.invited
          ? `Send ${answer.invited.email} this link (valid 7 days): ${location.origin}${answer.invited.invite_path}`
          : `${answer.added.email} is now ${answer.added.role}.`,
      );
    });
  };
  return (
    <section class="panel" aria-label="Members">
      <h2>Members</h2>
      {error && <ErrorNote error={error} />}
      <QueryView query={members}>
        {(data) => (
          <table>
            <caption>People with access to this project</caption>
            <thead>
              <tr>
                <th scope="col">E-mail</th>
                <th scope="col">Role</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {data.members.map((m) => (
                <tr>
                  <th scope="row">{m.email}</th>
                  <td>
                    <select
                      aria-label={`Role of ${m.email}`}
                      value={m.role}
                      onChange={(e) => {
                        const role = e.currentTarget.value;
                        act(() => api(`/api/v1/members/${m.user_id}`, { method: "PUT", project, body: { role } }));
                      }}
                    >
                      {["viewer", "analyst", "admin"].map((r) => (
                        <option value={r}>{r}</option>
                      ))}
                    </select>
                  </td>
                  <td>
                    <button type="button" class="danger" onClick={() => act(() => api(`/api/v1/members/${m.user_id}`, { method: "DELETE", project }))}>
                      Remove<span class="sr-only"> {m.email}</span>
                    </button>
                  </td>
                </tr>
              ))}
              {data.invites.map((i) => (
                <tr>
                  <th scope="row">{i.email}</th>
                  <td>{i.role} (invited)</td>
                  <td class="muted">until {formatTime(i.expires_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </QueryView>
      <form class="builder" onSubmit={invite} aria-label="Invite a member">
        <label>
          E-mail <input name="email" type="email" required />
        </label>
        <label>
          Role{" "}
          <select name="role">
            <option value="viewer">viewer</option>
            <option value="analyst">analyst</option>
            <option value="admin">admin</option>
          </select>
        </label>
        <button type="submit">Invite</button>
      </form>
      {message && (
        <p role="status" data-testid="invite-message">
          {message}
        </p>
      )}
    </section>
  );
}

function Keys({ project }) {
  const list = useQuery(`keys${project}`, () => api("/api/v1/keys", { project }));
  const [secret, setSecret] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const created = await api("/api/v1/keys", { method: "POST", project, body: { role: form.get("role"), name: form.get("name") } });
    setSecret(created.secret);
    list.reload();
  };
  return (
    <section class="panel" aria-label="API keys">
      <h2>API keys</h2>
      <QueryView query={list}>
        {(data) => (
          <DataTable
            caption="Keys of this project (secrets are never shown again)"
            columns={[
              { label: "Id", value: (k) => k.id },
              { label: "Role", value: (k) => k.role },
              { label: "Prefix", value: (k) => k.prefix },
              { label: "Name", value: (k) => k.name },
              {
                label: "Status",
                value: (k) => (k.revoked ? "revoked" : "active"),
                format: (v, k) =>
                  v === "active" ? (
                    <button type="button" class="danger" onClick={() => api(`/api/v1/keys/${k.id}`, { method: "DELETE", project }).then(list.reload)}>
                      Revoke<span class="sr-only"> {k.id}</span>
                    </button>
                  ) : (
                    v
                  ),
              },
            ]}
            rows={data.keys}
          />
        )}
      </QueryView>
      <form class="builder" onSubmit={create} aria-label="Create a key">
        <label>
          Role{" "}
          <select name="role">
            <option value="read">read</option>
            <option value="write">write</option>
            <option value="admin">admin</option>
          </select>
        </label>
        <label>
          Name <input name="name" />
        </label>
        <button type="submit">Create key</button>
      </form>
      {secret && (
        <p role="status">
          New key (shown once): <code data-testid="new-key">{secret}</code>
        </p>
      )}
    </section>
  );
}

function ProjectSettings({ project, admin }) {
  const settings = useQuery(`ps${project}`, () => api("/api/v1/project", { project }));
  const [saved, setSaved] = useState(null);
  const save = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    try {
      await api("/api/v1/project", {
        method: "PUT",
        project,
        body: {
          name: form.get("name"),
          timezone: form.get("timezone"),
          ip_policy: form.get("ip_policy"),
          consent_policy: form.get("consent_policy"),
          scrub_rules: form.getAll("scrub"),
        },
      });
      setSaved({ ok: true });
      settings.reload();
    } catch (err) {
      setSaved({ error: err });
    }
  };
  return (
    <section class="panel" aria-label="Project settings">
      <h2>Project</h2>
      <QueryView query={settings}>
        {(p) => (
          <form class="stack" onSubmit={save}>
            <label>
              Name <input name="name" defaultValue={p.name} disabled={!admin} />
            </label>
            <label>
              Time zone <input name="timezone" defaultValue={p.timezone} disabled={!admin} />
            </label>
            <label>
              Client IP{" "}
              <select name="ip_policy" defaultValue={p.privacy.ip_policy} disabled={!admin}>
                {["drop", "truncate", "keep"].map((v) => (
                  <option value={v}>{v}</option>
                ))}
              </select>
            </label>
            <label>
              Without consent{" "}
              <select name="consent_policy" defaultValue={p.privacy.consent_policy} disabled={!admin}>
                {["drop", "cookieless"].map((v) => (
                  <option value={v}>{v}</option>
                ))}
              </select>
            </label>
            <fieldset>
              <legend>Redact</legend>
              {["email", "card", "phone"].map((r) => (
                <label>
                  <input type="checkbox" name="scrub" value={r} defaultChecked={p.privacy.scrub_rules.includes(r)} disabled={!admin} /> {r}
                </label>
              ))}
            </fieldset>
            <p class="muted">
              Hot {p.hot_days} days · cold {p.cold_days} days · kept {p.retention_days} days
            </p>
            {admin && <button type="submit">Save settings</button>}
            {saved && saved.ok && <p role="status">Saved.</p>}
            {saved && saved.error && <ErrorNote error={saved.error} />}
          </form>
        )}
      </QueryView>
    </section>
  );
}

export function Settings({ project }) {
  const session = useSession();
  const admin = can(session.role, "admin");
  return (
    <section>
      <h1>Settings</h1>
      {!admin && (
        <p class="notice" data-testid="not-admin">
          You are a {session.role} of this project: members, keys and settings are changed by its admins.
        </p>
      )}
      <ProjectSettings project={project} admin={admin} />
      {admin && <Members project={project} />}
      {admin && <Keys project={project} />}
    </section>
  );
}
