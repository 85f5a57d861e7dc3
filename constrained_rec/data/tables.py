"""Reading delimited files into checked columns. Every error names the file and the 1-based line."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
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


_EXACT_FLOAT = 2**53  # floats hold every integer below this exactly
_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _cell(path: Path, first_line: int, row: int, values: pd.Series) -> str:
    """``path, line N, column C``: the column by its header name, or its 1-based position in a headerless file."""
    column = f"{values.name!r}" if isinstance(values.name, str) else int(values.name) + 1
    return f"{path}, line {first_line + row}, column {column}"


def _exact_int64(numbers: np.ndarray, values: pd.Series, what: str, path: Path, first_line: int) -> np.ndarray:
    """Integral float64 ``numbers`` read from ``values`` as int64. Past 2**53 a float is no longer exact, so
    those rows are read again from their text; a value outside int64 is an error, never a wrapped number."""
    out = np.zeros(len(numbers), dtype=np.int64)
    small = np.abs(numbers) < _EXACT_FLOAT
    out[small] = numbers[small]
    for row in np.flatnonzero(~small).tolist():
        raw = values.iloc[row]
        where = f"{_cell(path, first_line, row, values)}: {what} {raw!r}" if isinstance(raw, str) else \
            f"{_cell(path, first_line, row, values)}: {what} {raw}"
        exact = isinstance(raw, (str, int, np.integer))  # not a float: pandas kept the digits
        value = Decimal(raw.strip() if isinstance(raw, str) else int(raw) if exact else float(raw))
        if value != value.to_integral_value():
            raise ValueError(f"{where} is not an integer")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{where} is outside the 64-bit integer range (-2**63 to 2**63 - 1)")
        if not exact:  # a float past 2**53 has lost the last digits of what the file says
            raise ValueError(f"{where} (as read) cannot be read exactly: the column holds decimals, so pandas read it "
                             f"as floats, which lose digits past 2**53; write every {what} in it as a plain integer")
        out[row] = int(value)
    return out


def integer_column(values: pd.Series, what: str, path: Path, first_line: int) -> np.ndarray:
    """``values`` as int64, or an error naming the first line whose value is not an integer or not an int64."""
    if pd.api.types.is_integer_dtype(values.dtype):
        if values.dtype.kind == "u" and len(values) and values.max() >= 2**63:
            row = int(np.flatnonzero(values.to_numpy() >= 2**63)[0])
            raise ValueError(f"{_cell(path, first_line, row, values)}: {what} {values.iloc[row]} is outside the "
                             "64-bit integer range (-2**63 to 2**63 - 1)")
        return values.to_numpy(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(numbers)
    bad[~bad] = numbers[~bad] != np.round(numbers[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{_cell(path, first_line, row, values)}: {what} {values.iloc[row]!r} is not an integer")
    return _exact_int64(numbers, values, what, path, first_line)


def _iso_seconds(text: pd.Series) -> np.ndarray:
    """Unix seconds (floored) of ISO 8601 texts, NaN where a text is none. pandas parses in nanoseconds, which
    end in 2262, so a column holding a later (or pre-1677) date is read by Python's datetime (years 1-9999)."""
    try:
        parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("float64").to_numpy()
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        pass
    seconds = np.full(len(text), np.nan)
    for row, value in enumerate(text.tolist()):
        try:
            moment = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            continue
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        seconds[row] = (moment - _UTC_EPOCH) // timedelta(seconds=1)
    return seconds


def timestamp_column(values: pd.Series, path: Path, first_line: int) -> np.ndarray:
    """Unix seconds from integer seconds or ISO 8601 text (naive times are UTC); errors name the line."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return integer_column(values, "timestamp", path, first_line)
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    iso_seconds = _iso_seconds(text.where(numbers.isna(), None))
    seconds = numbers.fillna(pd.Series(iso_seconds, index=numbers.index)).to_numpy(np.float64)
    bad = ~np.isfinite(seconds)
    bad[~bad] = seconds[~bad] != np.round(seconds[~bad])
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{_cell(path, first_line, row, values)}: timestamp {values.iloc[row]!r} is neither integer Unix "
            "seconds nor an ISO 8601 date/time (years 1 to 9999)"
        )
    return _exact_int64(seconds, values, "timestamp", path, first_line)


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

