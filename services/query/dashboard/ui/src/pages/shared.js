import { resolveRange } from "../dates.js";
import { useSession } from "../hooks.js";
import { useLocation } from "../router.jsx";

// The range and filters of the current URL, in the project's time zone.
export function useRangeFilters() {
  const { search } = useLocation();
  const session = useSession();
  const timezone = session.projectInfo.timezone;
  return { range: resolveRange(search, timezone), filters: search.getAll("filter"), timezone, search };
}
