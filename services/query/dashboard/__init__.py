"""The browser dashboard served by the query service: sign-in and sessions, roles, saved
insights, dashboards, annotations and share links, and the single-page app itself."""
