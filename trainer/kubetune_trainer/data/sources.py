"""Reading dataset files into records that remember where they came from.

Every record carries its location (`file:line` for JSONL, `file row N` for
Parquet) so that any later complaint about it points the user at the exact
line, in the URI the user wrote. A dataset URI names one .jsonl or .parquet
file, or a folder (prefix) of them, read in name order. Files are reached
through a `FileAccess`: local paths by default; staging.UriFiles adds s3://,
pvc:// and hf://datasets/ URIs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from kubetune_trainer.errors import DataError

SUFFIXES = (".jsonl", ".parquet")

T = TypeVar("T")
U = TypeVar("U")

Problems = list[str] | None
"""Where bad records go: None, the first one raises DataError (training); a list, each one's
message is added to it and the record is skipped (the preflight, which reports them all)."""


def each(items: Iterable[T], convert: Callable[[T], U | None], problems: Problems) -> list[U]:
    """convert(item) for every item, leaving out None; a DataError raises, or with `problems`
    is recorded there and the item left out."""
    out = []
    for item in items:
        try:
            value = convert(item)
        except DataError as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        if value is not None:
            out.append(value)
    return out


class FileAccess(Protocol):
    """How dataset URIs are listed and opened."""

    def files(self, uri: str) -> list[str]:
        """The dataset files `uri` names: itself when it ends in a known suffix, else the .jsonl and
        .parquet files below it (a folder or prefix), sorted; raises DataError when there are none."""
        ...

    def open(self, uri: str) -> IO[bytes]:
        """One dataset file, for binary reading; raises DataError when it cannot."""
        ...


def suffix_of(uri: str) -> str:
    return Path(uri.split("?", 1)[0]).suffix.lower()


@dataclass(frozen=True)
class Record:
    """One dataset record and where it was read from."""

    where: str
    """`path:line` (JSONL) or `path row N` (Parquet), for error messages."""
    data: dict[str, Any]
    """The record's fields."""
    file: str = ""
    """The dataset file it was read from (paths in the record are relative to its folder)."""


def open_local(uri: str, shown_as: str | None = None) -> IO[bytes]:
    """A local path or file:// URI, opened for reading; errors name `shown_as` (default: `uri`)."""
    shown = shown_as or uri
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{shown}: only local dataset paths are supported here; stage the file locally first")
    path = Path(uri.removeprefix("file://"))
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{shown}: dataset file not found") from None
    except OSError as e:
        raise DataError(f"{shown}: cannot open the dataset file ({e.strerror})") from None


def list_local(uri: str, shown_as: str | None = None) -> list[str]:
    """A local file, or the dataset files in a local folder (recursively, in name order); errors
    name `shown_as` (default: `uri`)."""
    shown = shown_as or uri
    if suffix_of(uri) in SUFFIXES:
        return [uri]
    folder = Path(uri.removeprefix("file://"))
    if folder.is_dir():
        found = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not found:
            raise DataError(f"{shown}: the folder holds no {' or '.join(SUFFIXES)} files")
        return found
    raise DataError(f"{shown}: unsupported dataset file type {suffix_of(uri) or '(none)'!r}; "
                    f"use one of {', '.join(SUFFIXES)}, or a folder of such files")


class LocalFiles:
    """Local paths and file:// URIs."""

    def files(self, uri: str) -> list[str]:
        return list_local(uri)

    def open(self, uri: str) -> IO[bytes]:
        return open_local(uri)


LOCAL_FILES = LocalFiles()


def _jsonl_record(number: int, raw: bytes, uri: str) -> Record | None:
    where = f"{uri}:{number}"
    try:
        line = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text; JSONL files must be UTF-8") from None
    if not line:
        return None  # blank lines (e.g. a trailing newline) are not records
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                        "each line must hold one JSON object") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return Record(where, data, uri)


def _jsonl_records(stream: IO[bytes], uri: str, problems: Problems) -> list[Record]:
    return each(enumerate(stream, start=1), lambda item: _jsonl_record(item[0], item[1], uri), problems)


def _parquet_records(stream: IO[bytes], uri: str, _problems: Problems) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(stream)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{uri}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Record(f"{uri} row {number}", row, uri)


def read_records(uri: str, files: FileAccess = LOCAL_FILES, problems: Problems = None) -> list[Record]:
    """All records of a .jsonl or .parquet file, or of every such file in a folder; no records
    at all is an error. Lines that are no record raise, or go to `problems` (see Problems)."""
    records: list[Record] = []
    for file in files.files(uri):
        reader = _jsonl_records if suffix_of(file) == ".jsonl" else _parquet_records
        with files.open(file) as stream:
            records += reader(stream, file, problems)
    if not records:
        raise DataError(f"{uri}: the dataset {'file' if suffix_of(uri) in SUFFIXES else 'folder'} "
                        "holds no records")
    return records
