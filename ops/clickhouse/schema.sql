-- Esper's analytics tables: one row per event, the same DDL on chdb (embedded) and a ClickHouse server.
-- ReplacingMergeTree keyed by event_id (last in ORDER BY): a record delivered twice is stored once after merges,
-- and `FINAL` in a query deduplicates immediately. Timestamps are the events' occurred_at, in UTC.

CREATE DATABASE IF NOT EXISTS esper;

CREATE TABLE IF NOT EXISTS esper.epochs (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'),
    train_loss Float64, val_loss Float64, val_accuracy Float64, params UInt64, learning_rate Float64,
    duration_ms Float64, event_id String, train_flops UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree ORDER BY (run_id, epoch, event_id);
-- stores made before training FLOPs were counted
ALTER TABLE esper.epochs ADD COLUMN IF NOT EXISTS train_flops UInt64 DEFAULT 0;

CREATE TABLE IF NOT EXISTS esper.seed_telemetry (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), layer_id UInt32, layer_name String,
    seed_id UInt32, state LowCardinality(String), alpha Float32, chunk_variance Float32, dead_node_ratio Float32,
    avg_correlation Float32, exec_latency_us Float32, is_ready UInt8, kernel_artifact_id String, event_id String,
    growth_signal Float32 DEFAULT 0, growth_from_model UInt8 DEFAULT 0
) ENGINE = ReplacingMergeTree ORDER BY (run_id, layer_id, seed_id, epoch, event_id);
-- stores made before the growth signal was published
ALTER TABLE esper.seed_telemetry ADD COLUMN IF NOT EXISTS growth_signal Float32 DEFAULT 0;
ALTER TABLE esper.seed_telemetry ADD COLUMN IF NOT EXISTS growth_from_model UInt8 DEFAULT 0;

CREATE TABLE IF NOT EXISTS esper.lifecycle_transitions (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), layer_id UInt32, seed_id UInt32,
    from_state LowCardinality(String), to_state LowCardinality(String), kernel_artifact_id String, reason String,
    originator_version UInt64, event_id String, command_id String DEFAULT ''
) ENGINE = ReplacingMergeTree ORDER BY (run_id, layer_id, seed_id, originator_version, event_id);
-- stores made before transitions kept the command that caused them
ALTER TABLE esper.lifecycle_transitions ADD COLUMN IF NOT EXISTS command_id String DEFAULT '';

CREATE TABLE IF NOT EXISTS esper.decisions (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), policy LowCardinality(String),
    action LowCardinality(String), target_layer_id Int32, target_seed_id Int32, kernel_artifact_id String,
    candidates UInt32, reason String, event_id String, decision_id String DEFAULT ''
) ENGINE = ReplacingMergeTree ORDER BY (run_id, epoch, event_id);
ALTER TABLE esper.decisions ADD COLUMN IF NOT EXISTS decision_id String DEFAULT '';

-- the commands Tamiyo issued: the link from a decision (decision_id) to the transitions it caused (command_id)
CREATE TABLE IF NOT EXISTS esper.commands (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), layer_id UInt32, seed_id UInt32,
    command LowCardinality(String), kernel_artifact_id String, command_id String, decision_id String, event_id String
) ENGINE = ReplacingMergeTree ORDER BY (run_id, epoch, event_id);

-- Tolaria to Tamiyo at each epoch boundary: how many seeds are at work, on what device
CREATE TABLE IF NOT EXISTS esper.system_state (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), global_step UInt64, active_seeds UInt32,
    total_seeds UInt32, device LowCardinality(String), event_id String
) ENGINE = ReplacingMergeTree ORDER BY (run_id, epoch, event_id);

-- Tamiyo to Tolaria after each boundary: rebuild the optimizer, roll back
CREATE TABLE IF NOT EXISTS esper.adaptation_signals (
    run_id String, epoch UInt32, occurred_at DateTime64(3, 'UTC'), optimizer_rebuild_required UInt8,
    emergency_rollback_required UInt8, reason String, event_id String
) ENGINE = ReplacingMergeTree ORDER BY (run_id, epoch, event_id);

CREATE TABLE IF NOT EXISTS esper.kernel_measurements (
    artifact_id String, hardware LowCardinality(String), occurred_at DateTime64(3, 'UTC'), passed UInt8,
    latency_ms_mean Float64, latency_ms_p99 Float64, throughput_ops_per_sec Float64, memory_mb_peak Float64,
    precision_drift_vs_fp32 Float64, runs UInt32, failure String, event_id String
) ENGINE = ReplacingMergeTree ORDER BY (hardware, artifact_id, event_id);

CREATE TABLE IF NOT EXISTS esper.field_reports (
    run_id String, occurred_at DateTime64(3, 'UTC'), blueprint_id String, seed_id String,
    outcome LowCardinality(String), pre_metric Float64, post_metric Float64, reward Float64,
    kernel_artifact_id String, event_id String, decision_id String DEFAULT ''
) ENGINE = ReplacingMergeTree ORDER BY (run_id, blueprint_id, event_id);
ALTER TABLE esper.field_reports ADD COLUMN IF NOT EXISTS decision_id String DEFAULT '';

-- the family tree of the library: every submitted design, who made it, from which parents, by which Karn operator
CREATE TABLE IF NOT EXISTS esper.blueprints (
    blueprint_id String, name String, occurred_at DateTime64(3, 'UTC'), submitted_by LowCardinality(String),
    mutation LowCardinality(String), parent_ids Array(String), tags Array(String), event_id String
) ENGINE = ReplacingMergeTree ORDER BY (blueprint_id, event_id);
