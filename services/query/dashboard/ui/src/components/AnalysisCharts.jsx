import { sankey, sankeyLinkHorizontal } from "d3-sankey";
import { formatDuration, formatPercent } from "../format.js";
import { DataTable } from "./DataTable.jsx";

// Funnel steps as horizontal bars: persons, conversion from the first step, drop-off and the
// median time from the previous step; `onPersons(step)` lists the persons behind a step.
export function FunnelChart({ result, onPersons }) {
  const first = result.steps[0] ? result.steps[0].count : 0;
  return (
    <div class="funnel" data-testid="funnel-result">
      <ol>
        {result.steps.map((s) => (
          <li>
            <div class="funnel-label">
              <strong>
                {s.step}. {s.label}
              </strong>
              <span data-testid={`funnel-step-${s.step}`}>{s.count}</span> persons ·{" "}
              {formatPercent(s.conversion_from_first)} of step 1
              {s.step > 1 && (
                <>
                  {" "}
                  · {s.drop_off} dropped · median {formatDuration(s.median_time_from_previous_s)}
                </>
              )}
              {onPersons && s.count > 0 && (
                <button type="button" class="link" onClick={() => onPersons(s.step)}>
                  Persons<span class="sr-only"> who reached step {s.step}</span>
                </button>
              )}
            </div>
            <div class="funnel-bar" style={{ width: `${first ? (100 * s.count) / first : 0}%` }} aria-hidden="true" />
          </li>
        ))}
      </ol>
      <DataTable
        caption="Funnel steps"
        csvName="funnel"
        columns={[
          { label: "Step", value: (s) => `${s.step}. ${s.label}` },
          { label: "Persons", value: (s) => s.count, numeric: true },
          { label: "Conversion from first", value: (s) => s.conversion_from_first, format: (v) => formatPercent(v), numeric: true },
          { label: "Conversion from previous", value: (s) => s.conversion_from_previous, format: (v) => formatPercent(v), numeric: true },
          { label: "Median time (s)", value: (s) => s.median_time_from_previous_s, format: formatDuration, numeric: true },
        ]}
        rows={result.steps}
      />
    </div>
  );
}

function heatStyle(share) {
  const alpha = 0.06 + 0.94 * share;
  return { background: `rgba(67, 56, 202, ${alpha.toFixed(3)})`, color: alpha >= 0.85 ? "#fff" : "#0f172a" };
}

// The cohort x period retention grid as a heat map (a real table: readable and navigable).
export function RetentionHeatmap({ result }) {
  const periods = Array.from({ length: result.intervals + 1 }, (_, i) => i);
  return (
    <div class="table-wrap">
      <table class="heatmap" data-testid="retention-result">
        <caption>Retention by {result.period} (share of each cohort that came back)</caption>
        <thead>
          <tr>
            <th scope="col">Cohort</th>
            <th scope="col" class="num">
              Persons
            </th>
            {periods.map((p) => (
              <th scope="col" class="num">
                {result.period} {p}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {result.matrix.map((row) => (
            <tr>
              <th scope="row">{row.period_start.slice(0, 10)}</th>
              <td class="num">{row.size}</td>
              {periods.map((p) => {
                const share = row.percentages[p];
                if (share === null || share === undefined) return <td class="num empty">–</td>;
                return (
                  // Dark text until the cell is dark enough for white text (WCAG AA either way).
                  <td class="num heat" style={heatStyle(share)} title={`${row.counts[p]} persons`}>
                    {formatPercent(share, 0)}
                  </td>
                );
              })}
            </tr>
          ))}
          <tr class="average">
            <th scope="row">Average</th>
            <td />
            {periods.map((p) => (
              <td class="num">{formatPercent(result.average_percentages[p], 0)}</td>
            ))}
          </tr>
        </tbody>
      </table>
    </div>
  );
}

// Paths as a Sankey diagram (d3-sankey lays it out; SVG draws it), with the edges as a table.
export function PathsSankey({ result, width = 900 }) {
  const nodes = result.nodes.map((n) => ({ id: n.id, name: n.name, step: n.step, count: n.count }));
  const known = new Set(nodes.map((n) => n.id));
  const links = result.edges
    .filter((e) => known.has(e.source) && known.has(e.target))
    .map((e) => ({ source: e.source, target: e.target, value: e.value }));
  const used = new Set(links.flatMap((l) => [l.source, l.target]));
  const height = Math.max(240, Math.min(620, used.size * 22));
  if (links.length === 0) return <p class="muted">No paths in this range.</p>;
  const layout = sankey()
    .nodeId((n) => n.id)
    .nodeWidth(10)
    .nodePadding(10)
    .extent([
      [1, 1],
      [width - 160, height - 5],
    ])({ nodes: nodes.filter((n) => used.has(n.id)).map((n) => ({ ...n })), links: links.map((l) => ({ ...l })) });
  const link = sankeyLinkHorizontal();
  return (
    <figure class="sankey" data-testid="paths-result">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label="Paths between pages, step by step">
        <g fill="none" stroke-opacity="0.35">
          {layout.links.map((l) => (
            <path d={link(l)} stroke="#6366f1" stroke-width={Math.max(1, l.width)}>
              <title>
                {l.source.name} → {l.target.name}: {l.value}
              </title>
            </path>
          ))}
        </g>
        {layout.nodes.map((n) => (
          <g>
            <rect x={n.x0} y={n.y0} width={n.x1 - n.x0} height={Math.max(1, n.y1 - n.y0)} fill="#312e81" />
            <text x={n.x1 + 4} y={(n.y0 + n.y1) / 2} dominant-baseline="middle" font-size="11">
              {n.name} ({n.count})
            </text>
          </g>
        ))}
      </svg>
      <DataTable
        caption="Path steps"
        csvName="paths"
        columns={[
          { label: "From", value: (e) => e.source },
          { label: "To", value: (e) => e.target },
          { label: "Sessions", value: (e) => e.value, numeric: true },
        ]}
        rows={result.edges}
      />
    </figure>
  );
}

export function ExperimentResult({ result }) {
  return (
    <div data-testid="experiment-result">
      {result.srm.mismatch && (
        <p class="warning" role="alert">
          Sample ratio mismatch: exposures per variant differ from the expected split (p ={" "}
          {result.srm.p_value.toExponential(2)}); the results may be biased.
        </p>
      )}
      <DataTable
        caption={`Experiment ${result.experiment} (control: ${result.control})`}
        csvName={`experiment-${result.experiment}`}
        columns={[
          { label: "Variant", value: (v) => v.variant },
          { label: "Exposures", value: (v) => v.exposures, numeric: true },
          { label: "Conversions", value: (v) => v.conversions, numeric: true },
          { label: "Rate / mean", value: (v) => v.mean, format: (x) => (x === null ? "–" : x.toFixed(4)), numeric: true },
          {
            label: "Relative lift (95% interval)",
            value: (v) => v.relative_lift,
            format: (x, v) =>
              x === null ? "–" : `${formatPercent(x)} [${formatPercent(v.relative_lift_ci[0])}, ${formatPercent(v.relative_lift_ci[1])}]`,
            numeric: true,
          },
          { label: "p-value", value: (v) => v.p_value, format: (x) => (x === null ? "–" : x.toFixed(4)), numeric: true },
          { label: "Chance to be best", value: (v) => v.probability_to_be_best, format: (x) => formatPercent(x), numeric: true },
        ]}
        rows={result.variants}
      />
    </div>
  );
}
