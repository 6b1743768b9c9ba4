"""YAML text → plain data plus the line:col of every value and key (and plain data → YAML text, once).

PyYAML's composed nodes carry marks; this module walks them into dicts, lists and scalars and keeps a map from
each value's path (``("shots", 2, "duration")``) to its 1-based position, so that every later check can point at
the exact place in the file. It refuses what PyYAML would silently accept: duplicate keys, non-string keys, and
alias expansions or nestings large enough to exhaust memory or the stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from batchgen.errors import ManifestError, Problem

Path_ = tuple[str | int, ...]

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 64

# libyaml's composer when PyYAML was built with it (ten times faster on big manifests); nodes carry the same marks.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAGS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"}


@dataclass
class Document:
    """A YAML document as plain data, with the positions of its values and keys."""

    file: str
    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    """Problems that did not stop the reading (duplicate keys, bad scalars): the caller reports them."""
    sources: dict[Path_, str] = field(default_factory=dict)
    """Values read from another file (a manifest's ``shots_from``), by path: their positions are in that file."""
    included: dict[str, str] = field(default_factory=dict)
    """Those other files, each with the sha256 of the bytes read."""

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path`` (of its key when ``key``), else of its nearest known ancestor."""
        if key and path in self.key_positions:
            return self.key_positions[path]
        probe = path
        while probe not in self.positions and probe:
            probe = probe[:-1]
        return self.positions.get(probe, (1, 1))

    def file_of(self, path: Path_) -> str:
        """The file ``path`` was read from: this document's, or the one a value above it came from."""
        probe = path
        while probe and self.sources:
            if probe in self.sources:
                return self.sources[probe]
            probe = probe[:-1]
        return self.file

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        """A problem located at ``path`` of this document (in the file that value was read from)."""
        line, col = self.where(path, key=key)
        return Problem(self.file_of(path), line, col, format_path(path), message)

    def extend(self, at: Path_, other: Document) -> None:
        """Append the items of ``other`` (a document whose data is a list) to the list at ``at``, each keeping its
        positions in ``other.file``; and take ``other``'s problems."""
        target: Any = self.data
        for part in at:
            target = target[part]
        offset = len(target)
        target.extend(other.data)
        for mine, theirs in ((self.positions, other.positions), (self.key_positions, other.key_positions)):
            for path, position in theirs.items():
                if path and isinstance(path[0], int):
                    mine[(*at, path[0] + offset, *path[1:])] = position
        for index in range(len(other.data)):
            self.sources[(*at, offset + index)] = other.file
        self.problems.extend(other.problems)
        self.included.update(other.included)


def dump_yaml(data: Any) -> str:
    """``data`` as YAML text that reads back as the same data: mappings as blocks with their keys in order, lists of
    plain values on one line (``[dawn, dusk]``), anything YAML would read as another type (``"16:9"``) quoted."""
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return text


class _Dumper(yaml.SafeDumper):
    def represent_list(self, data: Any) -> yaml.SequenceNode:
        flow = all(not isinstance(item, dict | list) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    def represent_dict(self, data: Any) -> yaml.MappingNode:
        return self.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(dict, _Dumper.represent_dict)


def format_path(path: Path_) -> str:
    """``("shots", 2, "duration")`` → ``shots[2].duration``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load_document(path: str | Path) -> Document:
    """Read a YAML file into a :class:`Document`; every failure is a :class:`ManifestError`."""
    return parse_document(read_source(path), str(path))


def read_source(path: str | Path) -> bytes:
    """The bytes of a manifest file, bounded in size; a :class:`ManifestError` when it cannot be read."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ManifestError([Problem(name, 1, 1, "", f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        message = f"the file is {len(raw):,} bytes; a manifest may have at most {MAX_FILE_BYTES:,}"
        raise ManifestError([Problem(name, 1, 1, "", message)])
    return raw


def parse_document(raw: bytes, name: str) -> Document:
    """Parse bytes of YAML named ``name`` (used in messages) into a :class:`Document`."""
    text = decode_text(raw, name)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "not valid YAML"
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            reason = "a tab: YAML indents with spaces only; replace the tab with spaces"
        raise ManifestError([Problem(name, line, col, "", f"not valid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(name, 1, 1, "", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise ManifestError([Problem(name, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels")]) from None
    if root is None:
        raise ManifestError([Problem(name, 1, 1, "", "the file is empty; a manifest starts with `version: 1`")])
    doc = Document(name, None)
    walker = _Walker(doc)
    doc.data = walker.value(root, ())
    doc.problems = walker.problems
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        message = f"the top level is {kind}; a manifest is a mapping (`version: 1`, ...)"
        raise ManifestError([*doc.problems, doc.problem((), message)])
    return doc


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 bytes (a BOM allowed) as text; a :class:`ManifestError` at the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise ManifestError([Problem(name, line, col, "", message)]) from None


class _Walker:
    """Turns nodes into data, recording positions and problems, with bounds on size and depth."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(path) > MAX_DEPTH:
            what = f"more than {MAX_NODES:,} values" if self.nodes > MAX_NODES else f"deeper than {MAX_DEPTH} levels"
            self._fail(node, path, f"the document expands to {what} (anchors and aliases count each time)")
        self.doc.positions.setdefault(path, _pos(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        explicit_count = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        self.constructor.flatten_mapping(node)  # resolves `<<: *anchor` merge keys, placed first
        first_explicit = len(node.value) - explicit_count
        written: set[str] = set()  # keys written out in this mapping (merged ones may be overridden)
        for index, (key_node, value_node) in enumerate(node.value):
            key = self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problems.append(Problem(self.doc.file, *_pos(key_node), "", "keys must be plain text"))
                continue
            child = (*path, key)
            if key in written:
                first = self.doc.key_positions[child]
                message = f'duplicate key "{key}" (first at line {first[0]}); keep one of them'
                self.problems.append(Problem(self.doc.file, *_pos(key_node), format_path(child), message))
                continue
            if index >= first_explicit:
                written.add(key)
            self.doc.key_positions[child] = _pos(key_node)
            self.doc.positions.pop(child, None)
            out[key] = self.value(value_node, child)
        return out

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        if node.tag in _STR_TAGS:
            return str(node.value)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.doc.file, *_pos(node), format_path(path), f"bad value: {exc}"))
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problems.append(Problem(self.doc.file, *_pos(node), format_path(path), "must be a finite number"))
            return None
        if isinstance(value, bytes | bytearray):
            self.problems.append(
                Problem(self.doc.file, *_pos(node), format_path(path), "binary values are not allowed")
            )
            return None
        return value

    def _fail(self, node: yaml.Node, path: Path_, message: str) -> None:
        raise ManifestError([*self.problems, Problem(self.doc.file, *_pos(node), format_path(path), message)])


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""
