import { useEffect, useState } from "preact/hooks";
import { api, setCsrf } from "../api.js";
import { ErrorNote } from "../components/Status.jsx";
import { navigate } from "../router.jsx";

export function Login({ onSignedIn }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    setBusy(true);
    setError(null);
    try {
      const me = await api("/api/v1/auth/login", { method: "POST", body: { email: form.get("email"), password: form.get("password") } });
      setCsrf(me.csrf_token);
      onSignedIn(me);
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/", { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="auth" id="main">
      <h1>Sign in to Strata</h1>
      <form onSubmit={submit}>
        <label>
          E-mail
          <input name="email" type="email" autoComplete="username" required autoFocus />
        </label>
        <label>
          Password
          <input name="password" type="password" autoComplete="current-password" required />
        </label>
        {error && <ErrorNote error={error} />}
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

export function AcceptInvite({ token, onSignedIn }) {
  const [invite, setInvite] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    api(`/api/v1/auth/invites/${encodeURIComponent(token)}`).then(setInvite, setError);
  }, [token]);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    try {
      const me = await api("/api/v1/auth/invites/accept", { method: "POST", body: { token, name: form.get("name"), password: form.get("password") } });
      setCsrf(me.csrf_token);
      onSignedIn(me);
      navigate("/", { replace: true });
    } catch (err) {
      setError(err);
    }
  };
  return (
    <main class="auth" id="main">
      <h1>Join Strata</h1>
      {invite && (
        <p>
          {invite.email} is invited to <strong>{invite.project.name}</strong> as {invite.role}. Choose a password (at least 10 characters).
        </p>
      )}
      {error && <ErrorNote error={error} />}
      {invite && (
        <form onSubmit={submit}>
          <label>
            Your name <input name="name" autoComplete="name" />
          </label>
          <label>
            Password <input name="password" type="password" autoComplete="new-password" minLength={10} required />
          </label>
          <button type="submit">Create my account</button>
        </form>
      )}
    </main>
  );
}

export function Account({ me, onSignedIn }) {
  const [message, setMessage] = useState(null);
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    setError(null);
    try {
      const updated = await api("/api/v1/auth/password", {
        method: "POST",
        body: { current_password: form.get("current"), new_password: form.get("next") },
      });
      setCsrf(updated.csrf_token);
      onSignedIn(updated);
      setMessage("Password changed; your other sessions were signed out.");
      e.currentTarget.reset();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section>
      <h1>Your account</h1>
      <p>
        Signed in as <strong>{me.user.email}</strong>.
      </p>
      <ul>
        {me.projects.map((p) => (
          <li>
            {p.name} ({p.id}): {p.role}
          </li>
        ))}
      </ul>
      <h2>Change password</h2>
      <form onSubmit={submit} class="stack">
        <label>
          Current password <input name="current" type="password" autoComplete="current-password" required />
        </label>
        <label>
          New password <input name="next" type="password" autoComplete="new-password" minLength={10} required />
        </label>
        {error && <ErrorNote error={error} />}
        {message && <p role="status">{message}</p>}
        <button type="submit">Change password</button>
      </form>
    </section>
  );
}
