import { createContext } from "preact";
import { useCallback, useContext, useEffect, useRef, useState } from "preact/hooks";
import { api, RestoreNeeded } from "./api.js";

// What every page knows: the signed-in user, the current project and the user's role in it.
export const Session = createContext(null);

export function useSession() {
  return useContext(Session);
}

const RANK = { viewer: 1, analyst: 2, admin: 3 };

export function can(role, needed) {
  return (RANK[role] || 0) >= RANK[needed];
}

// Runs `load` whenever `key` changes. A 202 (archived days) shows the restore job's progress,
// polls it, and runs `load` again once the days are readable: the answer replaces the progress
// in place, without a reload.
export function useQuery(key, load) {
  const [state, setState] = useState({ loading: true, data: null, error: null, restore: null });
  const generation = useRef(0);
  const run = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true, error: null }));
    for (;;) {
      try {
        const data = await load();
        if (mine === generation.current) setState({ loading: false, data, error: null, restore: null });
        return;
      } catch (error) {
        if (mine !== generation.current) return;
        if (!(error instanceof RestoreNeeded)) {
          setState({ loading: false, data: null, error, restore: null });
          return;
        }
        let job = error.restore;
        setState({ loading: true, data: null, error: null, restore: job });
        while (job.state === "restoring") {
          await new Promise((r) => setTimeout(r, 1000));
          if (mine !== generation.current) return;
          try {
            job = await api(error.statusUrl, { project: job.project_id });
          } catch (pollError) {
            setState({ loading: false, data: null, error: pollError, restore: null });
            return;
          }
          if (mine === generation.current) setState((s) => ({ ...s, restore: job }));
        }
        if (job.state !== "restored") {
          setState({ loading: false, data: null, error: new Error(`restore ${job.state}`), restore: null });
          return;
        }
      }
    }
  }, [key]);
  useEffect(() => {
    run();
    return () => {
      generation.current++;
    };
  }, [run]);
  return { ...state, reload: run };
}

export function useInterval(fn, ms) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    if (!ms) return undefined;
    const id = setInterval(() => saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}
