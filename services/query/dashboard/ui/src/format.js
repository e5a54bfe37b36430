// Numbers as people read them.
const integer = new Intl.NumberFormat("en-US");
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function formatMetric(name, value) {
  if (value === null || value === undefined) return "–";
  if (name === "bounce_rate" || name.endsWith("_share") || name === "rate") return `${(value * 100).toFixed(1)}%`;
  if (name === "avg_session_duration" || name.endsWith("_s")) return formatDuration(value);
  if (name === "views_per_session") return value.toFixed(2);
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  return integer.format(value);
}

export function formatCompact(value) {
  return value === null || value === undefined ? "–" : compact.format(value);
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function formatPercent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)}%`;
}

export function formatAgo(iso, now = Date.now()) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} days ago`;
}

export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" }) : "–";
}

export const METRIC_LABELS = {
  visitors: "Visitors",
  pageviews: "Pageviews",
  sessions: "Sessions",
  views_per_session: "Views per session",
  bounce_rate: "Bounce rate",
  avg_session_duration: "Session duration",
  events: "Events",
  bot_share: "Bot share",
  cookieless_share: "Cookieless share",
};

export function metricLabel(name) {
  if (METRIC_LABELS[name]) return METRIC_LABELS[name];
  if (name.startsWith("event:")) return name.slice(6);
  return name;
}

// Lower is better for these: their change is shown green when it falls.
export const LOWER_IS_BETTER = new Set(["bounce_rate"]);
