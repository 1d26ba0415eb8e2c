"""Tensor names as paths, and the nested structure they form.

A name is a path of components (str, or int for list positions). A path of
one string is stored as its UTF-8 bytes; any other path is stored as the
record separator 0x1E followed by compact JSON of the component list (RFC
7464 style), e.g. b'\\x1e["model","layer",0,"weight"]'.

Paths may be thousands of components long (the reference loads them), so
everything that walks the nested structure does so with an explicit stack,
never by recursion.
"""

import json
import types
from typing import Any, Dict, Iterable, Tuple, Union

Path = Tuple[Union[str, int], ...]

_RS = 0x1E


def encode_path(path: Path) -> bytes:
    if len(path) == 1 and isinstance(path[0], str):
        if not path[0]:
            # tensorizer writes b"" but then refuses to read the file.
            raise ValueError("Invalid empty tensor name")
        check_plain_name(path[0])
        return path[0].encode("utf-8")
    return b"\x1e" + json.dumps(list(path), ensure_ascii=True, separators=(",", ":")).encode(
        "ascii"
    )


def check_plain_name(name: str) -> None:
    """Refuses a one-string name that a reader would take for a structured
    one: a stored name starting with 0x1E is parsed as a JSON path, so such
    a name either fails to load or comes back as another name."""
    if name.startswith("\x1e"):
        raise ValueError(
            f"Invalid tensor name {name!r}: a name may not start with the record"
            " separator 0x1E, which marks structured names in .tensors files"
        )


def decode_name(raw: bytes) -> Path:
    """The path a stored name encodes. A name that starts with 0x1E must be
    a valid JSON path, as tensorizer requires; other names are UTF-8."""
    if not raw:
        raise ValueError("Invalid empty tensor path")
    if raw[0] != _RS:
        return (raw.decode("utf-8"),)
    if len(raw) < 3 or raw[1:2] != b"[" or raw[-1:] != b"]":
        raise ValueError("Invalid tensor path: non-array json-seq")
    if b"\n" in raw or b"\r" in raw:
        raise ValueError("Illegal newline in json-seq")

    def invalid(value):
        raise ValueError(f"Invalid tensor path component: {value!r}")

    try:
        parts = json.loads(
            raw[1:].decode("utf-8"),
            object_hook=invalid,
            parse_float=invalid,
            parse_constant=invalid,
        )
    except RecursionError as e:
        raise ValueError("Cannot deserialize tensor path due to excessive nesting") from e
    if not isinstance(parts, list) or not parts:
        raise ValueError("Invalid tensor path: expected a non-empty array")
    for p in parts:
        if not (isinstance(p, str) or (type(p) is int and p >= 0)):
            raise ValueError(f"Invalid tensor path component: {p!r}")
    return tuple(parts)


def normalize(path: Path) -> Union[str, Path]:
    """What filter functions and read_tensors see: a str for one-string
    paths, else the tuple."""
    if len(path) == 1 and isinstance(path[0], str):
        return path[0]
    return path


def display(path: Path) -> str:
    n = normalize(path)
    return n if isinstance(n, str) else ".".join(map(str, n))


class PathRegistry:
    """Rejects names that cannot coexist in one nested structure."""

    def __init__(self):
        self.root: Dict[Any, Any] = {}

    def add(self, path: Path, leaf: Any = True) -> None:
        if not path:
            raise ValueError("Tensor path must not be empty")
        node = self.root
        for i, part in enumerate(path):
            if node and type(next(iter(node))) is not type(part):
                raise ValueError(f"Conflicting tensor paths: {path!r} mixes key types at one level")
            last = i == len(path) - 1
            child = node.get(part)
            if last:
                if child is not None:
                    raise ValueError(f"Conflicting tensor paths: {display(path)!r} is already used")
                node[part] = _Leaf(leaf)
            else:
                if child is None:
                    child = node[part] = {}
                elif isinstance(child, _Leaf):
                    raise ValueError(
                        f"Conflicting tensor paths: {display(path[: i + 1])!r}"
                        " is both a tensor and a prefix of another"
                    )
                node = child

    def filter(self, keep) -> None:
        """Drops filtered-out leaves. Branches left empty stay, as in
        tensorizer, so the top-level keys do not depend on the filter."""

        stack = [self.root]
        while stack:
            node = stack.pop()
            for k in list(node):
                v = node[k]
                if isinstance(v, _Leaf):
                    if not keep(v.value):
                        del node[k]
                else:
                    stack.append(v)


class _Leaf:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def is_leaf(node) -> bool:
    return isinstance(node, _Leaf)


def leaves(node) -> Iterable[Any]:
    """Leaf values under node, in insertion order."""
    if isinstance(node, _Leaf):
        yield node.value
        return
    stack = [iter(node.values())]
    while stack:
        for v in stack[-1]:
            if isinstance(v, _Leaf):
                yield v.value
            else:
                stack.append(iter(v.values()))
                break
        else:
            stack.pop()


def has_leaves(node) -> bool:
    return any(True for _ in leaves(node))


def _fold(node, leaf_value, finish):
    """Post-order fold of a structure without recursion: each leaf becomes
    leaf_value(leaf), each branch finish(items) over its children's results
    that are not None; a branch with no such children gives None below the
    top level. Returns the top level's finish(items)."""
    if isinstance(node, _Leaf):
        return leaf_value(node)
    # Frames: (key in the parent, iterator over children, results so far).
    stack = [(None, iter(node.items()), {})]
    while True:
        key, children, items = stack[-1]
        for k, v in children:
            if isinstance(v, _Leaf):
                value = leaf_value(v)
                if value is not None:
                    items[k] = value
            else:
                stack.append((k, iter(v.items()), {}))
                break
        else:
            stack.pop()
            if not stack:
                return finish(items)
            if items:
                stack[-1][2][key] = finish(items)


def prune(node, keep):
    """A copy of node with only the leaves whose value is in keep; branches
    left empty are dropped (the top level stays, possibly empty)."""
    return _fold(node, lambda leaf: leaf if leaf.value in keep else None, dict)


def build(node, value_of, as_proxy: bool):
    """Turns a structure node into mappings (proxies) or dicts/lists. Below
    the top level, branches a filter left empty are omitted (as tensorizer
    builds nested levels from the tensors it loaded)."""

    def finish(items):
        if as_proxy:
            return types.MappingProxyType(items)
        if items and isinstance(next(iter(items)), int):
            return [items[k] for k in sorted(items)]
        return items

    return _fold(node, lambda leaf: value_of(leaf.value), finish)
