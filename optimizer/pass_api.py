"""What a pass is: a named function ``Graph -> Graph`` with an optional options dataclass.

    @dataclass(frozen=True)
    class CastOptions:
        dtype: str = "float16"

    @graph_pass("cast-weights", CastOptions)
    def cast_weights(graph: Graph, opts: CastOptions) -> Graph: ...

The decorator only wraps the function with its name and options type; passes are listed
explicitly in `optimizer.passes.registry()` (no registration by import side effect).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from optimizer.errors import InvalidInput
from optimizer.ir import Graph


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class GraphPass:
    name: str
    fn: Callable[[Graph, Any], Graph]
    options: type

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip().split("\n")[0]

    def make_options(self, raw: dict[str, Any]) -> Any:
        """Build the options dataclass from strings (CLI) or typed values (API)."""
        fields = {f.name: f for f in dataclasses.fields(self.options)}
        typed = {}
        for key, value in raw.items():
            if key not in fields:
                raise InvalidInput(None, f"pass '{self.name}' has no option '{key}' "
                                         f"(options: {', '.join(fields) or 'none'})")
            typed[key] = _convert(self.name, key, value, fields[key].type)
        try:
            return self.options(**typed)
        except ValueError as e:
            raise InvalidInput(None, f"pass '{self.name}': {e}") from None

    def __call__(self, graph: Graph, **options: Any) -> Graph:
        return self.fn(graph, self.make_options(options))


def _convert(pass_name: str, key: str, value: Any, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if not isinstance(value, str) or kind == "str":
        return value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
    except ValueError:
        raise InvalidInput(None, f"pass '{pass_name}' option '{key}': expected {kind}, "
                                 f"got {value!r}") from None
    return value


def graph_pass(name: str, options: type = NoOptions) -> Callable[[Callable], GraphPass]:
    def wrap(fn: Callable[[Graph, Any], Graph]) -> GraphPass:
        return GraphPass(name, fn, options)
    return wrap


def parse_pass_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:key=value,key=value"`` -> (name, {key: value})."""
    name, _, rest = spec.strip().partition(":")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidInput(None, f"pass spec '{spec}': expected key=value, got '{item}'")
        options[key.strip()] = value.strip()
    if not name:
        raise InvalidInput(None, f"pass spec '{spec}' has no pass name")
    return name, options
