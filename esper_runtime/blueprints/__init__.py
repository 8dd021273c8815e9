"""BlueprintIR: declarative module designs, their validation, and the modules built from them."""

from esper_runtime.blueprints.build import IRModule, build_module
from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.ir import Blueprint, ConcreteIR
from esper_runtime.blueprints.library import STARTER_LIBRARY, starter_blueprints
from esper_runtime.blueprints.validate import param_count, validate, validate_concrete

__all__ = ["IRModule", "build_module", "BlueprintInvalid", "Blueprint", "ConcreteIR", "STARTER_LIBRARY",
           "starter_blueprints", "param_count", "validate", "validate_concrete"]
