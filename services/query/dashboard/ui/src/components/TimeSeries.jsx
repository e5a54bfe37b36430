import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { formatMetric, metricLabel } from "../format.js";

const COLORS = ["#4f46e5", "#0891b2", "#d97706", "#db2777", "#059669", "#7c3aed"];

// Vertical marks at annotations' times, with their text on hover (title of the overlay).
function annotationsPlugin(annotations) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = "#b45309";
          ctx.setLineDash([4, 4]);
          ctx.lineWidth = 1.5 * devicePixelRatio;
          for (const a of annotations) {
            const x = u.valToPos(new Date(a.at).getTime() / 1000, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        },
      ],
    },
  };
}

// A line chart of `metrics` over the buckets of a metrics answer (uPlot, canvas), with a
// hidden table of the same numbers for screen readers.
export function TimeSeries({ series, metrics, annotations = [], height = 260, label }) {
  const holder = useRef(null);
  useEffect(() => {
    const el = holder.current;
    if (!el || !series) return undefined;
    const xs = series.map((p) => new Date(p.bucket).getTime() / 1000);
    const data = [xs, ...metrics.map((m) => series.map((p) => p.values[m] ?? null))];
    const opts = {
      width: Math.max(300, el.clientWidth),
      height,
      legend: { show: metrics.length > 1 },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [
        { stroke: "#475569", grid: { stroke: "#e2e8f0" } },
        { stroke: "#475569", grid: { stroke: "#e2e8f0" }, size: 60, values: (u, vals) => vals.map((v) => formatMetric(metrics[0], v)) },
      ],
      series: [
        {},
        ...metrics.map((m, i) => ({
          label: metricLabel(m),
          stroke: COLORS[i % COLORS.length],
          width: 2,
          fill: i === 0 ? "rgba(79,70,229,0.08)" : undefined,
          value: (u, v) => formatMetric(m, v),
        })),
      ],
      plugins: [annotationsPlugin(annotations)],
    };
    const plot = new uPlot(opts, data, el);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(300, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [series, metrics.join(","), annotations, height]);
  const total = metrics[0];
  return (
    <figure class="chart">
      <div ref={holder} role="img" aria-label={label || `${metrics.map(metricLabel).join(", ")} over time`} />
      <table class="sr-only">
        <caption>{label || "Values over time"}</caption>
        <thead>
          <tr>
            <th scope="col">Bucket</th>
            {metrics.map((m) => (
              <th scope="col">{metricLabel(m)}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {(series || []).map((p) => (
            <tr>
              <th scope="row">{p.bucket}</th>
              {metrics.map((m) => (
                <td>{formatMetric(m, p.values[m])}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
      {annotations.length > 0 && (
        <figcaption class="annotations">
          {annotations.map((a) => (
            <span class="annotation" title={a.at}>
              ◆ {new Date(a.at).toLocaleDateString("en-GB")}: {a.text}
            </span>
          ))}
        </figcaption>
      )}
      {total === undefined && null}
    </figure>
  );
}
