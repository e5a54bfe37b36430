"""Writing a part as Parquet (zstd, sorted by device then time, page checksums) and reading one
back whole to prove it holds exactly the rows it should."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from libs.common.day_files.layout import (
    EVENT_FILE_SCHEMA,
    SORT_KEYS,
    day_bounds,
    is_day_file_schema,
)
from libs.common.errors import StrataError

_HASH_CHUNK = 1024 * 1024


class PartContents(msgspec.Struct, frozen=True, kw_only=True):
    """What a part holds: rows, the checksum of its event ids, its instants' range, and (for a
    file on disk) its size and base64 MD5."""

    rows: int
    ids_checksum: str
    min_ts: datetime | None
    max_ts: datetime | None
    bytes: int = 0
    md5: str = ""


class PartVerificationError(StrataError):
    """A part read back does not hold what was written (or cannot be read at all)."""

    code = "part_verification_failed"


def ids_checksum(event_ids: pa.Array | pa.ChunkedArray) -> str:
    """md5 (hex) of the event ids sorted and joined by newlines: independent of row order, so
    PostgreSQL's rows, the Arrow table and the file read back all give the same value."""
    ordered = pc.take(event_ids, pc.array_sort_indices(event_ids))
    digest = hashlib.md5()
    digest.update("\n".join(ordered.to_pylist()).encode("utf-8"))
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    """The base64 MD5 of a file (the object store's Content-MD5 form)."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode("ascii")


class PartWriter:
    """Streams Arrow tables (already sorted) into one Parquet file, in row groups of
    `row_group_rows`, and keeps what `PartContents` needs."""

    def __init__(
        self,
        path: Path,
        *,
        row_group_rows: int,
        zstd_level: int,
        metadata: Mapping[str, str],
    ) -> None:
        schema = EVENT_FILE_SCHEMA.with_metadata({k: v for k, v in metadata.items()})
        self.path = path
        self.row_group_rows = row_group_rows
        self._writer = pq.ParquetWriter(
            str(path),
            schema,
            compression="zstd",
            compression_level=zstd_level,
            use_dictionary=True,
            write_statistics=True,
            # Every page carries a CRC, so reading the part back checks every byte of it.
            write_page_checksum=True,
            sorting_columns=[
                pq.SortingColumn(EVENT_FILE_SCHEMA.get_field_index(name), order == "descending")
                for name, order in SORT_KEYS
            ],
        )
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._ids: list[pa.ChunkedArray] = []
        self._min: datetime | None = None
        self._max: datetime | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Add rows (in the file's sort order); full row groups are written out."""
        if table.num_rows == 0:
            return
        table = table.select(EVENT_FILE_SCHEMA.names).cast(EVENT_FILE_SCHEMA)
        self._ids.append(table.column("event_id"))
        low, high = pc.min_max(table.column("ts")).values()
        self._min = _earlier(self._min, low.as_py())
        self._max = _later(self._max, high.as_py())
        self.rows += table.num_rows
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        combined = pa.concat_tables(self._pending)
        head, rest = combined.slice(0, rows), combined.slice(rows)
        self._writer.write_table(head, row_group_size=rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> PartContents:
        """Write the last row group and the footer; what the file holds."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        ids = pa.chunked_array(
            [chunk for column in self._ids for chunk in column.chunks], type=pa.string()
        )
        return PartContents(
            rows=self.rows,
            ids_checksum=ids_checksum(ids),
            min_ts=self._min,
            max_ts=self._max,
            bytes=self.path.stat().st_size,
            md5=file_md5(self.path),
        )

    def abort(self) -> None:
        """Close after a failure (the file is discarded by the caller)."""
        try:
            self._writer.close()
        except (OSError, pa.ArrowException):
            pass


def write_part(
    path: Path,
    tables: Iterable[pa.Table],
    *,
    row_group_rows: int,
    zstd_level: int,
    metadata: Mapping[str, str],
) -> PartContents:
    """Write `tables` (in order) as one part file; what it holds."""
    writer = PartWriter(
        path, row_group_rows=row_group_rows, zstd_level=zstd_level, metadata=metadata
    )
    try:
        for table in tables:
            writer.write(table)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_part_contents(path: Path, *, project_id: str, day: date) -> PartContents:
    """Decode every page of a part (CRC-checked) and say what it holds; raises
    `PartVerificationError` when it cannot be read or holds rows of another project or day."""
    start, end = day_bounds(day)
    rows = 0
    ids: list[pa.Array] = []
    low: datetime | None = None
    high: datetime | None = None
    try:
        parquet = pq.ParquetFile(str(path), page_checksum_verification=True)
        if not is_day_file_schema(parquet.schema_arrow):
            raise PartVerificationError(f"{path.name}: schema differs from the day-file schema")
        for batch in parquet.iter_batches(batch_size=65536):
            rows += batch.num_rows
            ids.append(batch.column("event_id"))
            projects = pc.unique(batch.column("project_id")).to_pylist()
            if projects != [project_id]:
                raise PartVerificationError(f"{path.name}: rows of projects {projects}")
            batch_low, batch_high = pc.min_max(batch.column("ts")).values()
            low = _earlier(low, batch_low.as_py())
            high = _later(high, batch_high.as_py())
        footer_rows = parquet.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise PartVerificationError(f"{path.name}: unreadable: {exc}") from exc
    if rows != footer_rows:
        raise PartVerificationError(f"{path.name}: {rows} rows decoded, footer says {footer_rows}")
    if low is not None and high is not None and (low < start or high >= end):
        raise PartVerificationError(f"{path.name}: rows outside {day}: {low} .. {high}")
    return PartContents(
        rows=rows,
        ids_checksum=ids_checksum(pa.chunked_array(ids, type=pa.string())),
        min_ts=low,
        max_ts=high,
        bytes=path.stat().st_size,
        md5=file_md5(path),
    )


def _earlier(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current


def _later(current: datetime | None, candidate: datetime | None) -> datetime | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate > current else current
