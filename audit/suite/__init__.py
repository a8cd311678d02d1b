"""The suite file, one module per job:

- :mod:`.schema`: the pydantic models of the file, its name rules, :func:`json_schema`;
- :mod:`.sweeps`: parameter sweeps, member names, model patterns (:func:`match_models`) and the
  expansion of swept tables;
- :mod:`.refs`: the suite models and data sets a plug-in's parameters name;
- :mod:`.suite`: the validated suite (:class:`Suite`);
- :mod:`.pairs`: the (model, baseline) pairs a gate checks (:func:`gate_pairs`);
- :mod:`.checks`: parsing and validation, with every problem located (:func:`load_suite`,
  :class:`SuiteError`);
- :mod:`.tomlpos`: TOML positions for located errors.

``load_suite`` and the public names of these modules are re-exported here.
"""

from audit.suite.checks import SuiteError, SuiteIssue, load_suite, parse_toml, validate
from audit.suite.pairs import gate_pairs
from audit.suite.refs import data_refs, model_refs
from audit.suite.schema import (
    GATE_MODES,
    MAX_NAME_CHARS,
    SOURCE_SCHEMES,
    EvaluatorSpec,
    GateSpec,
    ModelSpec,
    ReportSpec,
    ScalingSpec,
    SuiteFile,
    SuiteMeta,
    json_schema,
)
from audit.suite.suite import Suite
from audit.suite.sweeps import Sweep, format_value, match_models, member_name

__all__ = [
    "GATE_MODES",
    "MAX_NAME_CHARS",
    "SOURCE_SCHEMES",
    "EvaluatorSpec",
    "GateSpec",
    "ModelSpec",
    "ReportSpec",
    "ScalingSpec",
    "Suite",
    "SuiteError",
    "SuiteFile",
    "SuiteIssue",
    "SuiteMeta",
    "Sweep",
    "data_refs",
    "format_value",
    "gate_pairs",
    "json_schema",
    "load_suite",
    "match_models",
    "member_name",
    "model_refs",
    "parse_toml",
    "validate",
]
