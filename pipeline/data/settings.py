"""The ``data:`` section of a job, and what every config section is built from.

:class:`Section` is the base of every section of a job (this one and those of :mod:`pipeline.config`): a
pydantic model that rejects unknown keys, validates assignments, and raises :class:`ConfigError` naming the
dotted key (``data.dataset``) and what is allowed. Its scalar types read YAML strictly: an integer field takes
no string and no fraction, a flag only true or false, a number also a fraction such as ``8/255``.

``data.dataset`` is checked against the data-set registry (:data:`pipeline.data.datasets.DATASETS`), and
:data:`REFERENCE_VAL_SIZE` reads it, so a data set registered there is accepted here.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from pipeline.data.datasets import ReferenceTable, dataset_names

# The reference validation split: the last N training images of each data set (its registry entry).
REFERENCE_VAL_SIZE: Mapping[str, int] = ReferenceTable("val_size")

FRACTION = r"^\s*[0-9.eE+-]+\s*/\s*[0-9.eE+-]+\s*$"


class ConfigError(ValueError):
    """A job configuration that cannot run; the message names the dotted key and what is allowed."""


def invalid(detail: str) -> PydanticCustomError:
    """A validation error whose message is ``detail`` as is (the key path is added by :func:`config_error`)."""
    return PydanticCustomError("config", "{detail}", {"detail": detail})


# ------------------------------------------------------------------------------------- scalar types
def _integer(value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise invalid(f"expected an integer, got {value!r}")
    return int(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"expected true or false, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(f"expected a string, got {value!r}")
    return value


def _number(value: Any) -> float:
    """Numbers and fraction strings such as "8/255" (how ε is usually written)."""
    out: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            num, _, den = text.partition("/")
            out = float(num) / float(den) if den else float(text)
        except (ValueError, ZeroDivisionError):
            out = None
    if out is None:
        raise invalid(f"expected a number (e.g. 0.03 or 8/255), got {value!r}")
    if not math.isfinite(out):
        raise invalid(f"expected a finite number, got {value!r}")
    return out


Integer = Annotated[int, BeforeValidator(_integer)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text)]
Number = Annotated[float, BeforeValidator(_number), WithJsonSchema(
    {"anyOf": [{"type": "number"}, {"type": "string", "pattern": FRACTION, "description": "a fraction, e.g. 8/255"}]})]

def _ints(**limits: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", **limits})


def _nums(**limits: float) -> WithJsonSchema:
    """A bounded number's JSON Schema: the bounds on its number form (a fraction string is checked once read)."""
    return WithJsonSchema({"anyOf": [{"type": "number", **limits}, {
        "type": "string", "pattern": FRACTION, "description": "a fraction, e.g. 8/255"}]})


# Bounded scalars: the bound is checked at load (the key, the value and the bound named) and stated in the JSON
# Schema (jobs/schema.json), so each range rule lives once and a generated bad value can be derived from it.
Count = Annotated[int, BeforeValidator(_integer), Field(ge=1), _ints(minimum=1)]  # steps, epochs, batches, workers
AtLeastZero = Annotated[int, BeforeValidator(_integer), Field(ge=0), _ints(minimum=0)]  # seeds, warm-up epochs
Retries = Annotated[int, BeforeValidator(_integer), Field(ge=-1), _ints(minimum=-1)]  # -1: without limit
Unit = Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=1.0), _nums(minimum=0.0, maximum=1.0)]  # λ
Width = Annotated[float, BeforeValidator(_number), Field(gt=0.0, le=1.0), _nums(exclusiveMinimum=0.0, maximum=1.0)]
NonNegative = Annotated[float, BeforeValidator(_number), Field(ge=0.0), _nums(minimum=0.0)]
Positive = Annotated[float, BeforeValidator(_number), Field(gt=0.0), _nums(exclusiveMinimum=0.0)]
Share = Annotated[float, BeforeValidator(_number), Field(ge=0.0, lt=1.0), _nums(minimum=0.0, exclusiveMaximum=1.0)]


@dataclass(frozen=True)
class OneOf:
    """``Annotated[str, OneOf(names)]``: one of a registry's names, read when a value is checked (so entries
    registered later count) and listed as the JSON Schema's ``enum``."""

    names: Callable[[], Iterable[str]]

    def check(self, value: Any) -> Any:
        allowed = list(self.names())
        if not isinstance(value, str) or value not in allowed:
            raise invalid(f"{value!r} is not allowed; allowed values: {', '.join(allowed)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out["enum"] = list(self.names())
        return out


# ------------------------------------------------------------------------------------------- errors
def _unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> X."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and len(get_args(tp)) == 2 and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def annotation_at(root: type[BaseModel], loc: Iterable[int | str]) -> Any:
    """The type at a key path of ``root`` (a section field, a list item), or None when there is none."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif isinstance(part, int) and get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


def dotted(prefix: str, loc: Iterable[int | str]) -> str:
    """``("lambda_choices", 2)`` under ``method`` -> ``method.lambda_choices[2]``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(err: Any, root: type[BaseModel], prefix: str) -> str:
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    where = dotted(prefix, loc)
    if kind == "extra_forbidden":
        section = annotation_at(root, loc[:-1])
        is_section = isinstance(section, type) and issubclass(section, BaseModel)
        allowed = ", ".join(section.model_fields) if is_section else "?"
        return f"{where}: unknown key; allowed keys: {allowed}"
    if kind == "literal_error":
        tp = annotation_at(root, loc)
        allowed = ", ".join(map(str, get_args(tp))) if get_origin(tp) is Literal else err["ctx"]["expected"]
        return f"{where}: {value!r} is not allowed; allowed values: {allowed}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: expected a section (mapping), got {value!r}"
    if kind == "list_type":
        return f"{where}: expected a list, got {value!r}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        (op, bound), = ((k, v) for k, v in err["ctx"].items() if k in ("ge", "gt", "le", "lt"))
        return f"{where}: {value!r} must be {dict(ge='>=', gt='>', le='<=', lt='<')[op]} {bound:g}"
    if kind == "too_short":
        return f"{where}: an empty list; give at least {err['ctx'].get('min_length', 1)} value"
    return f"{where}: {err['msg']}"


def config_error(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> ConfigError:
    """A pydantic error on ``root`` (the section at ``prefix``) as a ConfigError, one line per problem."""
    lines = [_describe(err, root, prefix) for err in exc.errors()]
    return ConfigError("\n".join(dict.fromkeys(lines)))


class Section(BaseModel):
    """A config section: unknown keys are errors and assignments are validated. A wrong assignment raises a
    ConfigError; constructing a section directly with wrong values raises pydantic's ValidationError (no
    ``__init__`` override: pydantic would call it for every nested section)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    section: ClassVar[str] = ""  # the section's key in a job ("data"); "" for the job itself

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc, type(self), self.section) from None


# ------------------------------------------------------------------------------------- data section
class DataConfig(Section):
    """Which data set, where its files are, and how it is read."""

    section: ClassVar[str] = "data"

    dataset: Annotated[str, OneOf(dataset_names)] = Field(
        default="cifar10", description="the data set (an entry of the registry in pipeline/data/datasets.py)")
    root: Text = Field(
        default="data", description="where CIFAR-10 / SVHN / STL-10 files live (torchvision's on-disk formats)")
    download: Flag = Field(
        default=False, description="let torchvision download into root when missing (needs internet)")
    val_size: Count | None = Field(
        default=None, description="held-out images at the end of train; null: the reference split of the data set")
    augment: Flag = Field(default=True, description="the reference train augmentation of the data set")
    loader: Literal["ffcv", "memory"] = Field(
        default="ffcv", description="ffcv: .beton files; memory: in-process tensors (debugging)")
    beton: Text | None = Field(
        default=None, description="a prepared set (folder or s3://bucket/prefix); null: prepared into the cache")
    cache_dir: Text | None = Field(default=None, description="node-local cache; null: $OAT_CACHE_DIR or ~/.cache/oat")
    workers: Count | None = Field(
        default=None, description="FFCV decoding threads; null: train.threads, else the CPUs this process may use")
