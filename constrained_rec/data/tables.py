"""Reading delimited files into checked columns. Every error names the file and the 1-based line."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def raise_not_utf8(path: Path) -> None:
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line, "
                    f"{raw[error.start:error.start + 4]!r}); this format must be UTF-8 encoded"
                ) from None
    raise ValueError(f"{path}: not valid UTF-8; this format must be UTF-8 encoded")


def _first_bad_quoted(path: Path, raw: bytes, sep: str, expected: int | None) -> tuple[int, int, int] | None:
    """(line, fields, expected) of the first record whose field count differs, read as quoted CSV."""
    # Latin-1 maps bytes 1:1, and separators, quotes and newlines are ASCII, so counts match any encoding.
    reader = csv.reader(io.StringIO(raw.decode("latin-1"), newline=""), delimiter=sep)
    line = 1
    try:
        for fields in reader:
            expected = len(fields) if expected is None else expected
            if len(fields) != expected:
                return line, len(fields), expected
            line = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({error})") from None
    return None


def _first_bad_plain(raw: bytes, sep: str, expected: int | None) -> tuple[int, int, int] | None:
    """(line, fields, expected) of the first line whose field count differs; ``sep`` is never quoted."""
    data = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(data) and data[-1] != 10:
        ends = np.r_[ends, len(data)]
    # Separators before each line end, differenced: separators per line; fields = separators + 1.
    separators = np.searchsorted(np.flatnonzero(data == ord(sep)), ends)
    fields = np.diff(separators, prepend=0) + 1
    blank = (np.diff(ends, prepend=-1) == 1) | ((np.diff(ends, prepend=-1) == 2) & (data[ends - 1] == 13))
    fields[blank] = 0
    if not len(fields):
        return None
    expected = int(fields[0]) if expected is None else expected
    bad = np.flatnonzero(fields != expected)
    return (int(bad[0]) + 1, int(fields[bad[0]]), expected) if len(bad) else None


def check_field_counts(path: Path, raw: bytes, sep: str, *, quoted: bool, expected: int | None = None) -> None:
    """Every line holds the same number of fields: ``expected``, or the first line's (the header's).

    A line with an extra field would otherwise be cut silently (``u1,2,3,11`` read as timestamp 3) and a
    short one padded with empty cells; either is an error naming the file and the 1-based line.
    """
    if quoted and b'"' in raw:
        bad = _first_bad_quoted(path, raw, sep, expected)
    else:
        bad = _first_bad_plain(raw, sep, expected)
    if bad is not None:
        line, fields, expected = bad
        shown = "\\t" if sep == "\t" else "::" if sep == "\x1f" else sep
        what = "is blank" if fields == 0 else f"has {fields} field{'s' * (fields != 1)}"
        raise ValueError(
            f"{path}, line {line}: the line {what}, but every line of this file must have {expected} "
            f"(fields separated by '{shown}')"
        )


def read_table(
    path: Path,
    columns: list,
    *,
    sep: str = ",",
    header: bool = True,
    encoding: str = "utf-8-sig",  # UTF-8, tolerating the byte-order mark that spreadsheet programs write
    text: str | None = None,
    string_columns: tuple = (),
    fields: int | None = None,
) -> pd.DataFrame:
    """Columns of a delimited file as a frame whose row ``i`` is line ``i + 1 + header`` of the file.

    ``columns`` are names (files with a header) or positions (files without). ``text`` is the file's
    content when it was already decoded (the ``::`` formats). Every line must hold ``fields`` fields
    (by default as many as the first line, the header where there is one); a blank line is an error.
    """
    raw = text.encode("utf-8") if text is not None else path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path}: the file is empty")
    quoting = csv.QUOTE_MINIMAL if sep in (",", "\t") else csv.QUOTE_NONE
    check_field_counts(path, raw, sep, quoted=quoting == csv.QUOTE_MINIMAL, expected=fields)
    encoding = "utf-8" if text is not None else encoding
    try:
        if header:
            present = list(pd.read_csv(io.BytesIO(raw), sep=sep, nrows=0, encoding=encoding).columns)
            missing = [c for c in columns if c not in present]
            if missing:
                raise ValueError(f"{path}, line 1: no column {missing[0]!r}; the header has {present}")
        return pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if header else None,
            usecols=columns,
            dtype={c: str for c in string_columns},
            encoding=encoding,
            keep_default_na=False,
            skip_blank_lines=False,
            quoting=quoting,
        )
    except UnicodeDecodeError:
        raise_not_utf8(path)
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: malformed table ({error})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty") from None


def integer_column(values: pd.Series, what: str, path: Path, first_line: int) -> np.ndarray:
    """``values`` as int64, or an error naming the first line whose value is not an integer."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(numbers)
    bad[~bad] = numbers[~bad] != np.round(numbers[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}, line {first_line + row}: {what} {values.iloc[row]!r} is not an integer")
    return numbers.astype(np.int64)


def timestamp_column(values: pd.Series, path: Path, first_line: int) -> np.ndarray:
    """Unix seconds from integer seconds or ISO 8601 text (naive times are UTC); errors name the line."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(np.int64)
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    parsed = pd.to_datetime(text.where(numbers.isna(), None), format="ISO8601", utc=True, errors="coerce")
    iso_seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    seconds = numbers.fillna(iso_seconds.astype("float64")).to_numpy(np.float64)
    bad = ~np.isfinite(seconds)
    bad[~bad] = seconds[~bad] != np.round(seconds[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}, line {first_line + row}: timestamp {values.iloc[row]!r} is neither integer Unix seconds "
            "nor an ISO 8601 date/time"
        )
    return seconds.astype(np.int64)


def titles_column(values: pd.Series, path: Path, first_line: int) -> list[str]:
    titles = values.astype(str).str.strip()
    empty = (titles == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{path}, line {first_line + row}: the item has an empty title")
    return titles.tolist()


def title_catalog(item_ids: np.ndarray, titles: list[str], path: Path, first_line: int) -> dict[int, str]:
    """item id -> title; an item listed twice with different titles is an error naming both lines."""
    catalog: dict[int, str] = {}
    first_row: dict[int, int] = {}
    for row, (item, title) in enumerate(zip(item_ids.tolist(), titles)):
        if item in catalog and catalog[item] != title:
            raise ValueError(
                f"{path}, line {first_line + row}: item {item} has the title {title!r}, but line "
                f"{first_line + first_row[item]} gave it {catalog[item]!r}"
            )
        catalog.setdefault(item, title)
        first_row.setdefault(item, row)
    return catalog


def interaction_frame(users, items, timestamps) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.asarray(users, np.int64),
            "item_id": np.asarray(items, np.int64),
            "timestamp": np.asarray(timestamps, np.int64),
        }
    )


def encode_ids(*columns: np.ndarray) -> tuple[list[np.ndarray], dict[int, str] | None]:
    """Integer ids stay as they are; otherwise the sorted distinct strings get ids 0, 1, 2, ..."""
    texts = [np.asarray(c, dtype=str) for c in columns]
    distinct = pd.unique(np.concatenate(texts)) if texts else np.array([], dtype=str)
    # "007" and "7" are different ids as text: only canonical integers (that fit int64) are taken as numbers.
    if pd.Series(distinct, dtype=object).str.fullmatch(r"-?(?:0|[1-9][0-9]{0,17})").all():
        return [t.astype(np.int64) for t in texts], None
    keys = np.sort(np.asarray(distinct, dtype=str))
    codes = [np.searchsorted(keys, t).astype(np.int64) for t in texts]
    return codes, {i: str(k) for i, k in enumerate(keys.tolist())}

