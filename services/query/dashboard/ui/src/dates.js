// Date ranges as the dashboard asks the API for them: explicit from/to dates (a `to` date
// includes that whole day), and the previous period of the same length for comparisons.
export const PRESETS = [
  ["today", "Today"],
  ["yesterday", "Yesterday"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
  ["90d", "Last 90 days"],
  ["month", "This month"],
  ["last-month", "Last month"],
  ["12mo", "Last 12 months"],
];

const DAY_MS = 86400000;

function pad(n) {
  return String(n).padStart(2, "0");
}

// A calendar date in the project's time zone, as YYYY-MM-DD.
export function isoDay(date, timeZone) {
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone, year: "numeric", month: "2-digit", day: "2-digit" })
    .formatToParts(date)
    .reduce((acc, p) => ({ ...acc, [p.type]: p.value }), {});
  return `${parts.year}-${parts.month}-${parts.day}`;
}

function parseDay(day) {
  const [y, m, d] = day.split("-").map(Number);
  return new Date(Date.UTC(y, m - 1, d));
}

function fmt(date) {
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`;
}

export function addDays(day, n) {
  return fmt(new Date(parseDay(day).getTime() + n * DAY_MS));
}

export function daysBetween(from, to) {
  return Math.round((parseDay(to) - parseDay(from)) / DAY_MS) + 1;
}

// {from, to, label} for a range named in the URL (a preset, or from/to dates).
export function resolveRange(search, timeZone, now = new Date()) {
  const today = isoDay(now, timeZone);
  const from = search.get("from");
  const to = search.get("to");
  if (from && to && /^\d{4}-\d{2}-\d{2}$/.test(from) && /^\d{4}-\d{2}-\d{2}$/.test(to)) {
    return { key: "custom", from, to, label: `${from} – ${to}` };
  }
  const key = search.get("range") || "30d";
  const label = (PRESETS.find(([k]) => k === key) || [key, key])[1];
  switch (key) {
    case "today":
      return { key, from: today, to: today, label };
    case "yesterday": {
      const d = addDays(today, -1);
      return { key, from: d, to: d, label };
    }
    case "7d":
      return { key, from: addDays(today, -6), to: today, label };
    case "90d":
      return { key, from: addDays(today, -89), to: today, label };
    case "month":
      return { key, from: `${today.slice(0, 7)}-01`, to: today, label };
    case "last-month": {
      const first = parseDay(`${today.slice(0, 7)}-01`);
      const lastDay = fmt(new Date(first.getTime() - DAY_MS));
      return { key, from: `${lastDay.slice(0, 7)}-01`, to: lastDay, label };
    }
    case "12mo":
      return { key, from: addDays(today, -364), to: today, label };
    default:
      return { key: "30d", from: addDays(today, -29), to: today, label: "Last 30 days" };
  }
}

// The period of the same number of days just before [from, to].
export function previousPeriod(range) {
  const days = daysBetween(range.from, range.to);
  return { from: addDays(range.from, -days), to: addDays(range.from, -1) };
}

export function defaultInterval(range) {
  const days = daysBetween(range.from, range.to);
  if (days <= 2) return "hour";
  if (days <= 120) return "day";
  if (days <= 400) return "week";
  return "month";
}
