"""Reflection over a plug-in's ``Params``: the suite models (``ModelRef``) and data sets
(``DataRef``) its parameters name."""

from __future__ import annotations

from typing import Any, get_args

from audit.plugins import DataRefMarker, ModelRefMarker, Params


def _annotated_markers(annotation: Any, marker: type) -> list[Any]:
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, marker)]
    for arg in get_args(annotation):
        found.extend(_annotated_markers(arg, marker))
    return found


def field_values(params: Params, marker: type) -> list[tuple[str, Any, Any]]:
    """(field name, value, marker) for every field of ``params`` annotated with ``marker``."""
    out = []
    for fname, finfo in type(params).model_fields.items():
        markers = [m for m in finfo.metadata if isinstance(m, marker)]
        markers += _annotated_markers(finfo.annotation, marker)
        if markers:
            out.append((fname, getattr(params, fname), markers[0]))
    return out


def model_ref_keys(params_class: type[Params]) -> list[str]:
    """The keys (aliases where given) of ``params_class``'s fields that name suite models."""
    keys = []
    for fname, finfo in params_class.model_fields.items():
        markers = [m for m in finfo.metadata if isinstance(m, ModelRefMarker)]
        if markers or _annotated_markers(finfo.annotation, ModelRefMarker):
            keys.append(finfo.alias or fname)
    return keys


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def model_refs(params: Params) -> list[str]:
    """The suite models a plug-in's parameters name (fields typed ``ModelRef``)."""
    return [v for _, value, _ in field_values(params, ModelRefMarker) for v in as_list(value)]


def data_refs(params: Params) -> list[tuple[str, str, str]]:
    """(field, data spec, record shape) for every data-set parameter.

    Parameters nested in a model or a list of models (``tasks = [{data = "..."}]``) count too,
    with the field written ``tasks[0].data``.
    """
    refs = [
        (fname, v, marker.shape)
        for fname, value, marker in field_values(params, DataRefMarker)
        for v in as_list(value)
    ]
    for fname in type(params).model_fields:
        value = getattr(params, fname)
        nested = as_list(value)
        for i, item in enumerate(nested):
            if isinstance(item, Params):
                where = f"{fname}[{i}]" if isinstance(value, list | tuple) else fname
                refs += [(f"{where}.{f}", v, shape) for f, v, shape in data_refs(item)]
    return refs
