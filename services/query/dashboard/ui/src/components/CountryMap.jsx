import { geoEqualEarth, geoPath } from "d3-geo";
import { iso31661NumericToAlpha2 } from "iso-3166/1-n-to-1-a2.js";
import { feature } from "topojson-client";
import countries110m from "world-atlas/countries-110m.json";
import { formatMetric } from "../format.js";

const projection = geoEqualEarth().fitSize([800, 400], { type: "Sphere" });
const path = geoPath(projection);
const SHAPES = feature(countries110m, countries110m.objects.countries).features.map((f) => ({
  alpha2: iso31661NumericToAlpha2[f.id] || null,
  name: f.properties.name,
  d: path(f),
}));

// Visitors per country as a shaded world map; each country with visitors is a button that
// filters by it (keyboard too), and its title tells the number.
export function CountryMap({ rows, metric = "visitors", onSelect }) {
  const byCode = new Map(rows.map((r) => [r.value, r.totals[metric] || 0]));
  const max = Math.max(1, ...byCode.values());
  return (
    <svg class="map" viewBox="0 0 800 400" role="group" aria-label={`${metric} by country`}>
      <path class="sphere" d={path({ type: "Sphere" })} />
      {SHAPES.map((s) => {
        const value = s.alpha2 ? byCode.get(s.alpha2) : undefined;
        if (!value) return <path class="country" d={s.d} />;
        const share = 0.15 + 0.85 * (value / max);
        return (
          <path
            class="country has-data"
            d={s.d}
            style={{ fillOpacity: share }}
            tabIndex={0}
            role="button"
            aria-label={`${s.name}: ${formatMetric(metric, value)} ${metric}`}
            onClick={() => onSelect && onSelect(s.alpha2)}
            onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && onSelect && (e.preventDefault(), onSelect(s.alpha2))}
          >
            <title>
              {s.name}: {formatMetric(metric, value)}
            </title>
          </path>
        );
      })}
    </svg>
  );
}
