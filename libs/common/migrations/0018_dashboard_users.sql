-- Dashboard users (docs/dashboard.md): people who sign in to the browser dashboard, their role
-- in each project, their cookie sessions, failed sign-ins (throttling) and pending invitations.
-- Machines keep using api_keys; nothing here changes what a key may do.

CREATE TABLE users (
    id                   text PRIMARY KEY,          -- usr_<hex>
    email                text NOT NULL,             -- stored lower-cased
    name                 text NOT NULL DEFAULT '',
    password_hash        text NOT NULL,             -- argon2id, in PHC string format
    created_at           timestamptz NOT NULL DEFAULT now(),
    password_changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email ON users (email);

-- viewer: reads; analyst: also saves insights, dashboards, cohorts, metrics, annotations and
-- share links; admin: also members, keys, project settings, privacy and erasure.
CREATE TABLE project_members (
    project_id  text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is stored (as for
-- API keys), so a database reader cannot sign in as anyone. csrf_token is echoed by the page
-- in X-CSRF-Token on every mutation.
CREATE TABLE dashboard_sessions (
    token_hash    bytea PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,             -- the absolute limit; idle expiry is computed
    user_agent    text NOT NULL DEFAULT ''
);
CREATE INDEX dashboard_sessions_user ON dashboard_sessions (user_id);

-- Failed sign-ins, by e-mail and by client address, counted over a sliding window.
CREATE TABLE login_failures (
    email      text NOT NULL,
    client     text NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
CREATE INDEX login_failures_client ON login_failures (client, failed_at);

-- An admin's invitation of a new person to a project: the link carries a random token (stored
-- hashed); accepting it sets the person's password and makes them a member with `role`.
CREATE TABLE user_invites (
    token_hash   bytea PRIMARY KEY,
    project_id   text NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    email        text NOT NULL,
    role         text NOT NULL CHECK (role IN ('viewer', 'analyst', 'admin')),
    invited_by   text REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz
);
CREATE INDEX user_invites_project ON user_invites (project_id);
