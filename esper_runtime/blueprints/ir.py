"""BlueprintIR: a declarative, versioned description of a seed's child module.

A blueprint is a small graph of typed ops over the seed's chunk ``x``, shape ``(batch, F)``, and, for designs that
add capacity beside the layer, one wide input of shape ``(batch, D)``: ``u``, the whole input of the seed's layer, or
``x0``, the model's input (a branch that skips from the input to the seed's chunk, as Cascade-Correlation's recruited
units read the inputs and write the outputs). Its output is the chunk's new value, width ``F``. Sizes in ops may be integers or relative to ``F`` or ``D`` (``{"F": 0.25}`` means
``max(1, round(F * 0.25))``), so one blueprint fits every chunk width; ``instantiate(F, D)`` resolves them (``D``
only for a design that reads ``u`` or ``x0``). The IR is data only: it is interpreted through a fixed table
of ops (``ops.py``) and never executes code of its own.

Canonical form: JSON with sorted keys and no whitespace, of the normalized document. Its SHA-256 (hex) is the
blueprint id; the instantiated IR's SHA-256 is the ``ir-hash`` in kernel artifact ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from esper_runtime.blueprints.exceptions import BlueprintInvalid

__all__ = ["IR_VERSION", "WIDE_INPUTS", "Blueprint", "ConcreteIR", "canonical_json", "resolve_dim", "reads_input",
           "wide_reads", "input_source"]

IR_VERSION = 1
MAX_DOCUMENT_BYTES = 64_000
WIDE_INPUTS = {"u": "layer", "x0": "model"}  # the wide inputs a design may read beside its chunk, and what they are


def canonical_json(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def resolve_dim(spec: Any, features: int, where: str, in_features: int | None = None) -> int:
    """An op size: an int, "F", {"F": ratio}, or (for a design that reads the layer's input) "D", {"D": ratio}."""
    def bad():
        return BlueprintInvalid("shapes", f"{where}: size must be an int, 'F', 'D', {{'F': ratio}} or "
                                          f"{{'D': ratio}}, not {spec!r}")

    if isinstance(spec, bool):
        raise bad()
    if isinstance(spec, int):
        return spec
    dims = {"F": features, "D": in_features}
    key = spec if isinstance(spec, str) else next(iter(spec), None) if isinstance(spec, dict) else None
    if key == "D" and in_features is None:
        raise BlueprintInvalid("shapes", f"{where}: a size in D needs a design that reads 'u' (the layer's input) "
                                         f"or 'x0' (the model's input)")
    if isinstance(spec, str) and spec in dims:
        return dims[spec]
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in dims:
        (dim, ratio), = spec.items()
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
            raise bad()
        if not 0 < float(ratio) <= 64:
            raise BlueprintInvalid("size", f"{where}: ratio {ratio} outside (0, 64]")
        return max(1, round(dims[dim] * float(ratio)))
    raise bad()


def wide_reads(doc: dict[str, Any]) -> set[str]:
    """The wide inputs (``u``, ``x0``) any node reads; safe on a document not validated yet (it is used by checks)."""
    nodes = doc.get("nodes")
    return {src for node in (nodes if isinstance(nodes, list) else []) if isinstance(node, dict)
            and isinstance(node.get("inputs"), list)
            for src in node["inputs"] if isinstance(src, str) and src in WIDE_INPUTS}


def reads_input(doc: dict[str, Any]) -> bool:
    """Whether a design reads a wide input: ``u`` (the seed layer's whole input) or ``x0`` (the model's input)."""
    return bool(wide_reads(doc))


def input_source(doc: dict[str, Any]) -> str | None:
    """``"layer"`` for a design that reads ``u``, ``"model"`` for one that reads ``x0``, None for one that reads only
    its chunk (validation refuses a design that reads both)."""
    reads = wide_reads(doc)
    return WIDE_INPUTS[min(reads)] if len(reads) == 1 else None


def _sorted_tags(tags: Any) -> Any:
    """Tags in canonical (sorted) order; anything but a list of strings is kept as it is, for validation to refuse."""
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        return sorted(tags)
    return tags


@dataclass(frozen=True)
class Blueprint:
    """A blueprint template (sizes may depend on F). Build one with ``Blueprint.parse``."""

    doc: dict[str, Any]

    @classmethod
    def parse(cls, source: str | bytes | dict) -> "Blueprint":
        """Parse and normalize (not validate: see ``validate``). Malformed input raises BlueprintInvalid."""
        if isinstance(source, (str, bytes)):
            if len(source) > MAX_DOCUMENT_BYTES:
                raise BlueprintInvalid("parse", f"document of {len(source)} bytes exceeds {MAX_DOCUMENT_BYTES}")
            try:
                source = json.loads(source)
            except (ValueError, RecursionError) as exc:
                raise BlueprintInvalid("parse", f"not JSON: {exc}") from None
        if not isinstance(source, dict):
            raise BlueprintInvalid("parse", "a blueprint is a JSON object")
        doc = {
            "ir_version": source.get("ir_version", IR_VERSION),
            "name": source.get("name"),
            "description": source.get("description", ""),
            "trainable": source.get("trainable"),
            "nodes": source.get("nodes"),
            "output": source.get("output"),
            "tags": _sorted_tags(source.get("tags", [])),
        }
        unknown = set(source) - set(doc)
        if unknown:
            raise BlueprintInvalid("parse", f"unknown top-level keys {sorted(unknown)}")
        try:
            text = canonical_json(doc)
            doc = json.loads(text)  # a deep, normalized copy: later edits to the source cannot leak in
        except (TypeError, ValueError, RecursionError) as exc:
            raise BlueprintInvalid("parse", f"not representable as canonical JSON: {exc}") from None
        if len(text) > MAX_DOCUMENT_BYTES:
            raise BlueprintInvalid("parse", f"document of {len(text)} bytes exceeds {MAX_DOCUMENT_BYTES}")
        return cls(doc)

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def canonical(self) -> str:
        return canonical_json(self.doc)

    @property
    def blueprint_id(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def trainable(self) -> bool:
        return bool(self.doc["trainable"])

    @property
    def reads_input(self) -> bool:
        return reads_input(self.doc)

    @property
    def input_source(self) -> str | None:
        return input_source(self.doc)

    def instantiate(self, features: int, in_features: int | None = None) -> "ConcreteIR":
        """Resolve every size for chunk width ``features`` (and, for a design that reads the layer's input, that
        input's width ``in_features``). Validate first (``validate(blueprint)``)."""
        from esper_runtime.blueprints.validate import validate_concrete

        for name, value in (("chunk width", features), ("input width", in_features)):
            if value is None and name == "input width":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
                raise BlueprintInvalid("size", f"{name} {value!r} outside 1..65536")
        if self.reads_input and in_features is None:
            raise BlueprintInvalid("shapes", f"{self.name} reads the {self.input_source}'s input: give its width D")
        nodes = []
        for node in self.doc["nodes"]:
            attrs = dict(node.get("attrs", {}))
            for key in ("out", "hidden"):
                if key in attrs:
                    attrs[key] = resolve_dim(attrs[key], features, f"node {node.get('id')!r}.{key}", in_features)
            nodes.append({**node, "attrs": attrs})
        extra = {"in_features": in_features} if self.reads_input else {}
        concrete = ConcreteIR({**self.doc, "features": features, **extra, "nodes": nodes,
                               "blueprint_id": self.blueprint_id})
        validate_concrete(concrete)
        return concrete


@dataclass(frozen=True)
class ConcreteIR:
    """A blueprint with every size resolved for one chunk width."""

    doc: dict[str, Any]

    @property
    def features(self) -> int:
        return self.doc["features"]

    @property
    def in_features(self) -> int | None:
        """The width of the wide input (``u`` or ``x0``) for a design that reads one, else None."""
        return self.doc.get("in_features")

    @property
    def input_source(self) -> str | None:
        """What the wide input is: ``"layer"`` (``u``), ``"model"`` (``x0``), or None."""
        return input_source(self.doc)

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def blueprint_id(self) -> str:
        return self.doc["blueprint_id"]

    @property
    def trainable(self) -> bool:
        return bool(self.doc["trainable"])

    @property
    def canonical(self) -> str:
        return canonical_json(self.doc)

    @property
    def ir_hash(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> "ConcreteIR":
        from esper_runtime.blueprints.validate import validate_concrete

        if len(text) > MAX_DOCUMENT_BYTES:
            raise BlueprintInvalid("parse", f"document of {len(text)} bytes exceeds {MAX_DOCUMENT_BYTES}")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise BlueprintInvalid("parse", f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or "features" not in doc:
            raise BlueprintInvalid("parse", "not an instantiated blueprint")
        ir = cls(doc)
        validate_concrete(ir)
        return ir
