"""A compiled check of FHIR R4B AuditEvents that passes only what fhir.resources accepts, in a small
fraction of its time.

fhir.resources validates every nested element (each Coding, Reference, CodeableConcept ...) through
Python: a wrap validator, a model ``__init__`` and three model validators per element, some twenty
elements in a BALP event, ~170 µs an event. This module builds one pydantic-core schema for the
whole resource from the same model definitions, so pydantic-core walks the nesting without
calling back into Python:

- a primitive field gets the very schema pydantic builds for the model field's own annotation
  (FHIR regexes, instant and date parsing, integer bounds), so it accepts exactly the same values;
- an element becomes a typed dict with unknown keys forbidden, required fields required, nulls
  refused in lists of elements and at most one (or, if required, exactly one) field of each
  choice group ``value[x]``: the model validators of ``FHIRAbstractModel``;
- what it does not reproduce it leaves out, which makes it refuse it: element types with
  validators or settings of their own (the primitive extensions ``_field``), contained resources,
  Python field names in place of JSON names, JSON text in place of an object, null for a
  primitive that FHIR requires (fhir.resources accepts it when an extension stands in).

So it may refuse what fhir.resources accepts, never the reverse: a resource it refuses must be
validated by fhir.resources, which decides and gives the reason.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import TypeAdapter, ValidationError
from pydantic_core import CoreSchema, SchemaValidator, core_schema

Model = type[FHIRAbstractModel]
MODEL_VALIDATORS = ("validators", "field_validators", "root_validators", "model_validators")


def audit_event_passes(resource: dict[str, Any]) -> bool:
    """True if ``resource`` is an R4B AuditEvent that fhir.resources accepts; False if this check cannot
    tell (fhir.resources itself must then decide)."""
    try:
        _audit_event_validator().validate_python(resource)
    except ValidationError:
        return False
    return True


@functools.cache
def _audit_event_validator() -> SchemaValidator:
    """Built on first use (tens of milliseconds), then shared: pydantic-core validators are thread-safe."""
    builder = _SchemaBuilder()
    root = builder.reference(AuditEvent)
    if root is None:
        raise RuntimeError("fhir.resources' AuditEvent carries validators this check does not reproduce")
    schemas = builder.definitions
    schemas[root["schema_ref"]] = _with_resource_type(schemas[root["schema_ref"]], AuditEvent)
    return SchemaValidator(core_schema.definitions_schema(root, list(schemas.values())))


class _SchemaBuilder:
    """Schemas of the element types reachable from a resource, one definition each (elements nest
    recursively: an Extension holds Extensions)."""

    def __init__(self) -> None:
        self.definitions: dict[str, CoreSchema] = {}
        self._unsupported: set[str] = set()

    def reference(self, model: Model) -> core_schema.DefinitionReferenceSchema | None:
        """A reference to ``model``'s schema, or None if the model is one this check does not reproduce."""
        ref = f"{model.__module__}.{model.__qualname__}"
        if ref in self._unsupported:
            return None
        if ref not in self.definitions:
            if not _reproducible(model):
                self._unsupported.add(ref)
                return None
            self.definitions[ref] = core_schema.any_schema()  # placeholder while its fields refer back to it
            self.definitions[ref] = self._element(model, ref)
        return core_schema.definition_reference_schema(ref)

    def _element(self, model: Model, ref: str) -> CoreSchema:
        instance = model.model_construct()
        required_primitives = {name for name, _extension in instance.get_required_fields()}
        fields: dict[str, core_schema.TypedDictField] = {}
        for name, info in model.model_fields.items():
            if info.alias not in (None, name):
                continue  # the primitive extensions `_field`: their type has a validator of its own
            element_required = name in required_primitives
            field = self._field(info.annotation, element_required=element_required)
            if field is not None:
                fields[name] = core_schema.typed_dict_field(field, required=info.is_required() or element_required)
        choices = list(instance.get_one_of_many_fields().items())
        element = core_schema.typed_dict_schema(fields, extra_behavior="forbid", ref=None if choices else ref)
        if not choices:
            return element
        return core_schema.no_info_after_validator_function(_choice_check(model, choices), element, ref=ref)

    def _field(self, annotation: Any, *, element_required: bool) -> CoreSchema | None:
        element = _element_type(annotation)
        if element is None:
            # A primitive: the schema pydantic gives the model field, minus null where FHIR requires a value.
            return TypeAdapter(_not_optional(annotation) if element_required else annotation).core_schema
        if issubclass(element, FhirElementOrResourceBase):
            return None  # contained resources: any resource type
        target = self.reference(element.get_model_klass())
        if target is None:
            return None
        return _shaped(annotation, target)


def _reproducible(model: Model) -> bool:
    """Only models validated by FHIRAbstractModel's rules alone, with its settings."""
    base, own = FHIRAbstractModel.__pydantic_decorators__, model.__pydantic_decorators__
    same_validators = all(set(getattr(own, kind)) == set(getattr(base, kind)) for kind in MODEL_VALIDATORS)
    return same_validators and model.model_config == FHIRAbstractModel.model_config


def _element_type(annotation: Any) -> type[FhirBase] | None:
    """The FHIR element type in a field's annotation (``X``, ``X | None``, ``List[X]``, ...), if any."""
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return annotation
    for argument in typing.get_args(annotation):
        if (found := _element_type(argument)) is not None:
            return found
    return None


def _shaped(annotation: Any, element: CoreSchema) -> CoreSchema | None:
    """``element`` shaped like the annotation: optional, a list, or an optional list (as fhir.resources
    declares its element fields); None for any other shape."""
    arguments = typing.get_args(annotation)
    if _is_optional(annotation):
        inner = _shaped(_not_optional(annotation), element)
        return core_schema.nullable_schema(inner) if inner is not None else None
    if typing.get_origin(annotation) is list and len(arguments) == 1:
        inner = _shaped(arguments[0], element)
        return core_schema.list_schema(inner) if inner is not None else None
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return element
    return None


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _not_optional(annotation: Any) -> Any:
    if not _is_optional(annotation):
        return annotation
    rest = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 (a runtime union of types)


def _choice_check(model: Model, groups: list[tuple[str, list[str]]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """FHIRAbstractModel._validate_one_of_many: at most one field of each group given (not null), exactly
    one if the group is required."""
    required = {
        prefix: (model.model_fields[names[0]].json_schema_extra or {}).get("one_of_many_required") is True  # type: ignore[union-attr]
        for prefix, names in groups
    }

    def check(element: dict[str, Any]) -> dict[str, Any]:
        for prefix, names in groups:
            given = sum(1 for name in names if element.get(name) is not None)
            if given > 1 or (given == 0 and required[prefix]):
                raise ValueError(f"one {prefix}[x] field expected, {given} given")
        return element

    return check


def _with_resource_type(schema: CoreSchema, model: Model) -> CoreSchema:
    """The resource's own schema, with the ``resourceType`` a resource carries in JSON."""
    if schema["type"] != "typed-dict":
        raise RuntimeError(f"{model.__name__} is not checked as a plain element")
    resource_type = core_schema.typed_dict_field(core_schema.literal_schema([model.__resource_type__]))
    return {**schema, "fields": {**schema["fields"], "resourceType": resource_type}}
