import json

import pytest

from streams import SchemaCatalog, SchemaError, SchemaNotFound
from streams.codegen import TARGET, generate
from streams.schemas import crc64_avro

ARCHITECTURE_EVENTS = {
    "KasminaControlCommand", "SeedLifecycleTransition", "SeedTelemetry", "EpochCompleted", "SystemStatePacket",
    "AdaptationSignal", "CheckpointSaved", "RollbackPerformed", "FieldReport", "BlueprintSubmitted",
    "BlueprintRejected", "KernelCompiled", "KernelCompilationFailed", "KernelValidationReport", "KernelTagsAssigned",
    "KernelStatusChanged", "TamiyoDecision", "RunStarted", "RunCompleted",
}
ENVELOPE_FIELDS = ["event_id", "occurred_at", "run_id", "originator_id", "originator_version", "producer"]


def test_every_catalog_event_has_a_schema_with_the_envelope(catalog):
    events = {s.short_name: s for s in catalog.events}
    assert ARCHITECTURE_EVENTS <= set(events)
    for s in events.values():
        envelope = s.schema["fields"][0]["type"]
        if isinstance(envelope, dict):
            assert [f["name"] for f in envelope["fields"]] == ENVELOPE_FIELDS


def test_seed_payloads_keep_the_seeds_fields(catalog):
    fields = lambda name: {f["name"] for f in catalog.get(name).schema["fields"]}  # noqa: E731
    assert {"target_layer_id", "target_seed_id", "command", "kernel_artifact_id", "selected_for_tags",
            "grafting_strategy", "command_id"} <= fields("KasminaControlCommand")
    assert {"blueprint_id", "seed_id", "pre_metric", "post_metric", "outcome", "eval_metrics"} <= fields("FieldReport")


def test_fingerprint_is_crc64_avro_as_the_spec_defines_it():
    # The Avro specification's reference value for the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_events_stand_alone_and_have_distinct_fingerprints(catalog):
    fps = [s.fingerprint for s in catalog]
    assert len(set(fps)) == len(fps)
    for s in catalog.events:
        assert "esper.common.Envelope" in s.canonical  # the envelope is expanded, not a dangling reference
        assert catalog.by_fingerprint(s.fingerprint) is s


def test_generated_types_match_the_schemas():
    assert TARGET.read_text() == generate(), "streams/contracts.py is stale: run `python -m streams.codegen`"


def test_short_and_full_names_resolve(catalog):
    assert catalog.get("FieldReport") is catalog.get("esper.innovation.FieldReport")
    with pytest.raises(SchemaNotFound):
        catalog.get("NoSuchEvent")


def _write(tmp_path, rel, doc):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_broken_schema_files_are_refused_naming_the_file(tmp_path):
    _write(tmp_path, "a/Bad.avsc", "{not json")
    with pytest.raises(SchemaError, match="Bad.avsc"):
        SchemaCatalog.load(tmp_path)


def test_unknown_type_reference_is_refused(tmp_path):
    _write(tmp_path, "a/X.avsc", {"type": "record", "name": "X", "namespace": "esper.a",
                                  "fields": [{"name": "y", "type": "esper.a.Missing"}]})
    with pytest.raises(SchemaError, match="unknown type"):
        SchemaCatalog.load(tmp_path)


def test_file_name_must_match_type_name(tmp_path):
    _write(tmp_path, "a/Wrong.avsc", {"type": "record", "name": "Right", "namespace": "esper.a",
                                      "fields": [{"name": "y", "type": "int"}]})
    with pytest.raises(SchemaError, match="Right.avsc"):
        SchemaCatalog.load(tmp_path)


def test_invalid_avro_is_refused(tmp_path):
    _write(tmp_path, "a/X.avsc", {"type": "record", "name": "X", "namespace": "esper.a",
                                  "fields": [{"name": "y", "type": "int", "default": "not an int"}]})
    with pytest.raises(SchemaError, match="X.avsc"):
        SchemaCatalog.load(tmp_path)
