import { downloadCsv } from "../csv.js";

// A table with an optional bar per row, clickable rows (to filter by them) and a CSV export.
export function DataTable({ caption, columns, rows, onRowClick, barColumn, csvName, empty = "No data" }) {
  const max = barColumn ? Math.max(1, ...rows.map((r) => barColumn.value(r) || 0)) : 1;
  return (
    <div class="table-wrap">
      <table>
        <caption>
          <span>{caption}</span>
          {csvName && rows.length > 0 && (
            <button type="button" class="link csv" onClick={() => downloadCsv(`${csvName}.csv`, columns, rows)}>
              Export CSV<span class="sr-only"> of {caption}</span>
            </button>
          )}
        </caption>
        <thead>
          <tr>
            {columns.map((c) => (
              <th scope="col" class={c.numeric ? "num" : ""}>
                {c.label}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.length === 0 && (
            <tr>
              <td colSpan={columns.length} class="muted">
                {empty}
              </td>
            </tr>
          )}
          {rows.map((row) => (
            <tr class={onRowClick ? "clickable" : ""}>
              {columns.map((c, i) => {
                const shown = c.format ? c.format(c.value(row), row) : c.value(row);
                if (i === 0 && onRowClick) {
                  const share = barColumn ? (barColumn.value(row) || 0) / max : 0;
                  return (
                    <th scope="row" class="bar-cell" style={{ "--share": share }}>
                      <button type="button" class="row-filter" onClick={() => onRowClick(row)} title="Filter by this">
                        {shown}
                      </button>
                    </th>
                  );
                }
                return <td class={c.numeric ? "num" : ""}>{shown}</td>;
              })}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
