import { formatAgo } from "../format.js";

export function RestoreProgress({ job }) {
  const done = job.objects ? job.objects_restored / job.objects : 0;
  return (
    <div class="restore" role="status" aria-live="polite" data-testid="restore-progress">
      <p>
        Restoring archived days {job.first_day} to {job.last_day} from the archive tier… the answer appears here
        when they are readable.
      </p>
      <progress max="1" value={done} aria-label="Restore progress" />
      <p class="muted">
        {job.objects_restored} of {job.objects} file(s) readable · {job.state}
      </p>
    </div>
  );
}

export function Loading({ label = "Loading" }) {
  return (
    <p class="loading" role="status" aria-live="polite">
      {label}…
    </p>
  );
}

export function ErrorNote({ error }) {
  return (
    <p class="error" role="alert">
      {error.status ? `${error.status}: ` : ""}
      {error.message}
    </p>
  );
}

// Loading, restore progress or error in place of the content; the content once there.
export function QueryView({ query, children, label }) {
  if (query.restore) return <RestoreProgress job={query.restore} />;
  if (query.error) return <ErrorNote error={query.error} />;
  if (!query.data) return <Loading label={label} />;
  return children(query.data);
}

export function Freshness({ status }) {
  if (!status) return null;
  if (!status.has_events) return <span class="freshness waiting">No events yet</span>;
  const ago = formatAgo(status.last_received_at || status.last_event_at);
  return (
    <span class="freshness" title={`Newest event ${status.last_event_at}`} data-testid="freshness">
      <span class="dot" aria-hidden="true" /> Data as of {ago}
    </span>
  );
}
