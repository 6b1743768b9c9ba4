"""Shot lists from CSV or JSONL: a ``shots_from`` file → its shots as plain data, each value with the line and column
it was read from, in the same :class:`Document` the YAML validator walks (so a problem names that file).

A **CSV** has a header line naming its columns — shot keys (``id``, ``prompt``, ``model``, ``takes``, any request
field) and ``matrix.<var>`` — then one shot a line. Its cells are text: each is converted by its column's JSON type
where that is unambiguous (``5`` → 5 for an integer field, ``true``/``false`` for a boolean, JSON for a list or a
mapping; anything else stays text, for the schema to judge), a matrix cell lists its values separated by ``|``, and
a blank cell leaves its key out, so ``defaults`` apply. A **JSONL** file holds one JSON object a line with the same
keys (``matrix`` as an object, or ``matrix.<var>`` lists); a ``null`` leaves its key out.

Positions are 1-based: the line is the file's (a CSV's header is line 1), the column is the character column where
the cell starts (its opening quote, for a quoted cell) or where the JSON value starts. The CSV is read by the small
reader below (RFC 4180: a quoted cell may hold commas, line breaks and doubled quotes) because Python's ``csv``
module tells neither the line nor the column of a cell.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.errors import ManifestError, Problem
from batchgen.validation import did_you_mean
from batchgen.yamlsource import MAX_DEPTH, Document, Path_, decode_text

MAX_ROWS_BYTES = 64 * 1024 * 1024
SUFFIXES = (".csv", ".jsonl")
MATRIX = "matrix"
MATRIX_PREFIX = "matrix."
SEPARATOR = "|"  # between the values of a matrix cell
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"')  # unrolled: linear even when the closing quote is missing
_PLAIN = re.compile(r"[^,\r\n]*")
_NEWLINE = re.compile(r"\r\n|\n|\r")
_INTEGER = re.compile(r"\s*[-+]?\d+\s*")
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_DECODER = json.JSONDecoder()


class RowsFileProblem(ValueError):
    """A shot list that cannot be read at all (missing, unreadable, too big); the caller says where."""


@dataclass(frozen=True)
class Cell:
    """One CSV cell: its text (quotes removed) and where it starts."""

    line: int
    col: int
    text: str
    quoted: bool = False

    @property
    def blank(self) -> bool:
        """Empty or only spaces: the key is left out."""
        return not self.text.strip()


@dataclass(frozen=True)
class Column:
    """What a CSV column holds: a shot key, or (``matrix``) the values of a matrix variable; ``kind`` is the JSON
    type its cells are converted to."""

    key: str
    kind: str
    matrix: bool = False


_SAID = Column("", "string")  # a column whose header cell has a problem (said once, there): its cells are skipped


def read_rows(path: str | Path) -> bytes:
    """The bytes of a shot list, bounded in size; :class:`RowsFileProblem` when it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RowsFileProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_ROWS_BYTES:
        raise RowsFileProblem(f"{path} is {len(raw):,} bytes; a shot list may have at most {MAX_ROWS_BYTES:,}")
    return raw


def parse_rows(raw: bytes, name: str, types: Mapping[str, str]) -> Document:
    """The shots of the CSV or JSONL bytes ``raw`` (by the suffix of ``name``, the file named in problems) as a
    document whose data is their list, with every problem found in it. ``types`` maps each key a shot may have but
    ``matrix`` to its JSON type."""
    doc = Document(name, [])
    try:
        text = decode_text(raw, name)
    except ManifestError as exc:
        doc.problems.extend(exc.problems)
        return doc
    if name.lower().endswith(".jsonl"):
        _read_jsonl(doc, text)
    else:
        _read_csv(doc, text, types)
    return doc


# --- CSV ------------------------------------------------------------------------------------------------------


def _read_csv(doc: Document, text: str, types: Mapping[str, str]) -> None:
    reader = _CsvReader(text, doc.file, doc.problems)
    records = (cells for cells in reader.records() if not all(cell.blank for cell in cells))
    header = next(records, None)
    if header is None:
        message = "the file is empty; a CSV shot list starts with a header line naming its columns (id,prompt,...)"
        doc.problems.append(Problem(doc.file, 1, 1, "", message))
        return
    columns = _columns(header, types, doc)
    if len(header) == 1 and any(mark in header[0].text for mark in (";", "\t")):
        return  # another separator: no row can be read (each would only say its "id" is missing)
    for cells in records:
        _add_row(doc, cells, columns, header[0].line)


class _CsvReader:
    """Reads CSV text record by record, knowing the line and column of each cell."""

    def __init__(self, text: str, name: str, problems: list[Problem]) -> None:
        self.text, self.name, self.problems = text, name, problems
        self.pos, self.line, self.line_start = 0, 1, 0

    def records(self) -> Iterator[list[Cell]]:
        """Each record as a list of cells. An unterminated quote ends the reading: all that follows it would be
        inside the quote."""
        while self.pos < len(self.text):
            cells: list[Cell] = []
            while (cell := self._cell()) is not None:
                cells.append(cell)
                if not self.text.startswith(",", self.pos):
                    break
                self.pos += 1
            if cell is None:
                return
            end_of_line = _NEWLINE.match(self.text, self.pos)
            if end_of_line is not None:
                self.pos = self.line_start = end_of_line.end()
                self.line += 1
            yield cells

    def _cell(self) -> Cell | None:
        text, pos = self.text, self.pos
        col = pos - self.line_start + 1
        if not text.startswith('"', pos):
            self.pos = self._plain_end(pos)
            return Cell(self.line, col, text[pos : self.pos])
        quoted = _QUOTED.match(text, pos)
        if quoted is None:
            message = 'unterminated quote: this cell\'s opening " is never closed (a " inside a quoted cell is written'
            self.problems.append(Problem(self.name, self.line, col, "", f'{message} twice: "")'))
            return None
        cell = Cell(self.line, col, quoted.group(1).replace('""', '"'), quoted=True)
        for newline in _NEWLINE.finditer(text, pos, quoted.end()):
            self.line, self.line_start = self.line + 1, newline.end()
        self.pos = quoted.end()
        if self.pos < len(text) and text[self.pos] not in ",\r\n":
            message = 'text after a closing quote: quote the whole cell, and write a " inside it twice ("")'
            self.problems.append(Problem(self.name, self.line, self.pos - self.line_start + 1, "", message))
            self.pos = self._plain_end(self.pos)
        return cell

    def _plain_end(self, pos: int) -> int:
        plain = _PLAIN.match(self.text, pos)
        return plain.end() if plain is not None else pos


def _columns(header: list[Cell], types: Mapping[str, str], doc: Document) -> list[Column | None]:
    """What each header cell names: None for an unnamed one (a value under it is a problem of its row), ``_SAID``
    for one whose name is a problem."""
    columns: list[Column | None] = []
    seen: dict[str, int] = {}
    for number, cell in enumerate(header, 1):
        title = cell.text.strip()
        column, message = _column(title, types)
        if title in seen:
            column, message = None, f'the column "{title}" again (first as column {seen[title]}); keep one of them'
        seen.setdefault(title, number)
        if message:
            doc.problems.append(Problem(doc.file, cell.line, cell.col, "", message))
            column = _SAID
        columns.append(column)
    return columns


def _column(title: str, types: Mapping[str, str]) -> tuple[Column | None, str]:
    """The column a header cell names, or why it names none (nothing to say for an unnamed one)."""
    if not title:
        return None, ""
    if title.startswith(MATRIX_PREFIX):
        variable = title.removeprefix(MATRIX_PREFIX)
        if _VARIABLE.fullmatch(variable):
            return Column(variable, types.get(variable, "string"), matrix=True), ""
        return None, f'"{variable}" is not a valid matrix variable name: use letters, digits and _'
    if title in types:
        return Column(title, types[title]), ""
    if title == MATRIX:
        return None, 'a matrix is one column a variable, named "matrix.<var>" (e.g. "matrix.time"), values split by |'
    if ";" in title or "\t" in title:
        return None, f'unknown column "{title[:40]}": columns are separated by commas (export comma-separated CSV)'
    return None, f'unknown column "{title}"{did_you_mean(title, sorted(types))}'


def _add_row(doc: Document, cells: list[Cell], columns: list[Column | None], header_line: int) -> None:
    """One record as a shot: the converted value of each non-blank cell, with its position."""
    index = len(doc.data)
    shot: dict[str, Any] = {}
    matrix: dict[str, list[Any]] = {}
    doc.positions[(index,)] = (cells[0].line, cells[0].col)
    orphan = None  # the first value no column names: said once a row
    for number, cell in enumerate(cells, 1):
        column = columns[number - 1] if number <= len(columns) else None
        if column is _SAID:
            continue
        if cell.blank or column is None:
            if not cell.blank and orphan is None:
                orphan = _orphan(doc.file, cell, number, len(columns), header_line)
            continue
        if column.matrix:
            path: Path_ = (index, MATRIX, column.key)
            matrix[column.key] = _matrix_values(doc, path, cell, column.kind)
            doc.positions.setdefault((index, MATRIX), (cell.line, cell.col))
        else:
            path = (index, column.key)
            shot[column.key] = convert(cell.text, column.kind)
        doc.positions[path] = doc.key_positions[path] = (cell.line, cell.col)
    if orphan is not None:
        doc.problems.append(orphan)
    if matrix:
        shot[MATRIX] = matrix
    doc.data.append(shot)


def _orphan(name: str, cell: Cell, number: int, named: int, header_line: int) -> Problem:
    """A non-blank cell that no column of the header names."""
    if number > named:
        message = f"this row has a value in column {number}, but the header (line {header_line}) names {named} columns"
    else:
        message = f"column {number} has no name in the header (line {header_line}): name it, or empty this cell"
    return Problem(name, cell.line, cell.col, "", message)


def _matrix_values(doc: Document, path: Path_, cell: Cell, kind: str) -> list[Any]:
    """The values of a matrix cell, each with its own column where the cell's text shows it as it is."""
    values = []
    exact = not cell.quoted or not re.search(r'["\r\n]', cell.text)
    offset = 1 if cell.quoted else 0
    for index, item in enumerate(cell.text.split(SEPARATOR)):
        lead = len(item) - len(item.lstrip())
        doc.positions[(*path, index)] = (cell.line, cell.col + offset + lead if exact else cell.col)
        values.append(convert(item.strip(), kind))
        offset += len(item) + len(SEPARATOR)
    return values


def convert(text: str, kind: str) -> Any:
    """A cell's text as a value of the JSON type ``kind`` when it reads as one, else the text itself."""
    if kind == "integer" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "number" and _NUMBER.fullmatch(text):
        number = int(text) if _INTEGER.fullmatch(text) else float(text)
        return number if math.isfinite(number) else text
    if kind == "boolean" and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    if kind in ("array", "object"):
        try:
            return json.loads(text, parse_constant=_no_constant)
        except ValueError:  # the schema says it is not a list (or a mapping), quoting it
            return text
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# --- JSONL ----------------------------------------------------------------------------------------------------


def _read_jsonl(doc: Document, text: str) -> None:
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")  # a JSON string holds no raw line break: each line is whole
        if not line.strip():
            continue
        index = len(doc.data)
        scratch = Document(doc.file, None)
        try:
            value = _JsonLine(scratch, line, number).read((index,))
        except json.JSONDecodeError as exc:
            message = f"not JSON: {exc.msg}"
            if line.lstrip().startswith(("//", "#")):
                message = "JSON has no comments: remove this line (or keep notes in a field of the shot)"
            doc.problems.append(Problem(doc.file, number, exc.colno, "", message))
            continue
        start = (number, len(line) - len(line.lstrip()) + 1)
        if not isinstance(value, dict):
            kind = "a list" if isinstance(value, list) else "a single value"
            message = f'this line is {kind}; each line of a JSONL shot list is one object: {{"id": ..., "prompt": ...}}'
            doc.problems.append(Problem(doc.file, *start, "", message))
            continue
        shot = _jsonl_shot(scratch, index, value)
        doc.problems.extend(scratch.problems)
        doc.positions.update(scratch.positions)
        doc.key_positions.update(scratch.key_positions)
        doc.positions[(index,)] = start
        doc.data.append(shot)


def _jsonl_shot(line: Document, index: int, value: dict[str, Any]) -> dict[str, Any]:
    """A line's object as a shot: nulls left out, ``matrix.<var>`` keys moved into its ``matrix`` (``line`` has the
    positions of this line alone)."""
    shot = {key: item for key, item in value.items() if item is not None}
    if isinstance(shot.get(MATRIX), dict):
        shot[MATRIX] = {key: item for key, item in shot[MATRIX].items() if item is not None}
    for key in [key for key in shot if key.startswith(MATRIX_PREFIX)]:
        variable = key.removeprefix(MATRIX_PREFIX)
        matrix = shot.setdefault(MATRIX, {})
        where = line.key_positions[(index, key)]
        values = shot.pop(key)
        if not isinstance(matrix, dict) or variable in matrix:
            message = f'"{variable}" is in this line\'s "matrix" too; keep one of them'
            line.problems.append(Problem(line.file, *where, "", message))
            continue
        matrix[variable] = values
        for path in [path for path in line.positions if path[:2] == (index, key)]:
            line.positions[(index, MATRIX, variable, *path[2:])] = line.positions[path]
        line.key_positions[(index, MATRIX, variable)] = where
        line.positions.setdefault((index, MATRIX), where)
    return shot


class _JsonLine:
    """One line of JSON, read value by value so that the column of each value and key is known."""

    def __init__(self, doc: Document, text: str, line: int) -> None:
        self.doc, self.text, self.line = doc, text, line

    def read(self, path: Path_) -> Any:
        """The line's value, its positions recorded under ``path``; :class:`json.JSONDecodeError` if it is not
        one JSON value."""
        value, pos = self._value(self._skip(0), path)
        pos = self._skip(pos)
        if pos != len(self.text):
            raise json.JSONDecodeError("more after the value (one object a line)", self.text, pos)
        return value

    def _skip(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in " \t":
            pos += 1
        return pos

    def _value(self, pos: int, path: Path_) -> tuple[Any, int]:
        if len(path) > MAX_DEPTH:
            raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", self.text, pos)
        self.doc.positions[path] = (self.line, pos + 1)
        if self.text.startswith("{", pos):
            return self._object(pos, path)
        if self.text.startswith("[", pos):
            return self._array(pos, path)
        value, end = _DECODER.raw_decode(self.text, pos)
        if isinstance(value, float) and not math.isfinite(value):
            raise json.JSONDecodeError("must be a finite number", self.text, pos)
        return value, end

    def _object(self, pos: int, path: Path_) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        pos = self._skip(pos + 1)
        if self.text.startswith("}", pos):
            return out, pos + 1
        while True:
            if not self.text.startswith('"', pos):
                raise json.JSONDecodeError("expecting a key in double quotes", self.text, pos)
            key, end = _DECODER.raw_decode(self.text, pos)
            colon = self._skip(end)
            if not self.text.startswith(":", colon):
                raise json.JSONDecodeError("expecting ':' after the key", self.text, colon)
            child: Path_ = (*path, key)
            if key in out:
                first = self.doc.key_positions[child][1]
                message = f'duplicate key "{key}" (first at column {first}); keep one of them'
                self.doc.problems.append(Problem(self.doc.file, self.line, pos + 1, "", message))
                child = (*path, "", key)  # read, and dropped
            else:
                self.doc.key_positions[child] = (self.line, pos + 1)
            value, pos = self._value(self._skip(colon + 1), child)
            if len(child) == len(path) + 1:
                out[key] = value
            pos = self._skip(pos)
            if self.text.startswith("}", pos):
                return out, pos + 1
            if not self.text.startswith(",", pos):
                raise json.JSONDecodeError("expecting ',' or '}'", self.text, pos)
            pos = self._skip(pos + 1)

    def _array(self, pos: int, path: Path_) -> tuple[list[Any], int]:
        out: list[Any] = []
        pos = self._skip(pos + 1)
        if self.text.startswith("]", pos):
            return out, pos + 1
        while True:
            value, pos = self._value(pos, (*path, len(out)))
            out.append(value)
            pos = self._skip(pos)
            if self.text.startswith("]", pos):
                return out, pos + 1
            if not self.text.startswith(",", pos):
                raise json.JSONDecodeError("expecting ',' or ']'", self.text, pos)
            pos = self._skip(pos + 1)
