"""The store's schema, as numbered migrations.

Each migration moves a store from version ``i`` to ``i + 1``. A store records its version in
``perftune_meta``; a store newer than this code is refused, an older one is migrated when it
is opened for writing.
"""

from __future__ import annotations

# A measurement's outcome (perftune.collect.worker names each) and a campaign's state.
MEASUREMENT_STATUSES = ("ok", "compile_error", "launch_error", "wrong_result", "timeout", "oom")
CAMPAIGN_STATUSES = ("running", "finished", "interrupted")

MEASUREMENT_COLUMNS: dict[str, str] = {
    "key": "VARCHAR PRIMARY KEY",
    "campaign_id": "VARCHAR",
    "device_id": "VARCHAR NOT NULL",
    "family": "VARCHAR NOT NULL",
    "dataflow": "VARCHAR NOT NULL",
    "dtype": "VARCHAR NOT NULL",
    "m": "BIGINT",
    "n": "BIGINT",
    "k": "BIGINT",
    "shape": "VARCHAR NOT NULL",
    "config": "VARCHAR NOT NULL",
    "status": "VARCHAR NOT NULL",
    "error": "VARCHAR",
    "rel_error": "DOUBLE",
    "runtime_ms": "DOUBLE",
    "runtime_min_ms": "DOUBLE",
    "runtime_max_ms": "DOUBLE",
    "runtime_spread": "DOUBLE",
    "reps": "INTEGER",
    "rounds": "INTEGER",
    "timer": "VARCHAR",
    "flops": "DOUBLE",
    "bytes": "DOUBLE",
    "tflops": "DOUBLE",
    "gbps": "DOUBLE",
    "avg_power_w": "DOUBLE",
    "energy_per_call_j": "DOUBLE",
    "energy_window_s": "DOUBLE",
    "sm_clock_mhz": "DOUBLE",
    "temperature_c": "DOUBLE",
    "throttle_reasons": "VARCHAR",
    "torch_version": "VARCHAR",
    "triton_version": "VARCHAR",
    "cuda_version": "VARCHAR",
    "driver_version": "VARCHAR",
    "software_key": "VARCHAR NOT NULL",
    "measured_at": "TIMESTAMP NOT NULL",
}

DEVICE_COLUMNS: dict[str, str] = {
    "device_id": "VARCHAR PRIMARY KEY",
    "name": "VARCHAR NOT NULL",
    "kind": "VARCHAR NOT NULL",  # 'gpu' or 'cpu-interpreter'
    "compute_capability": "VARCHAR",
    "sm_count": "INTEGER",
    "memory_bytes": "BIGINT",
    "l2_bytes": "BIGINT",
    "shared_memory_per_block": "BIGINT",
    "max_sm_clock_mhz": "INTEGER",
    "max_mem_clock_mhz": "INTEGER",
    "power_limit_w": "DOUBLE",
    "driver_version": "VARCHAR",
    "cuda_version": "VARCHAR",
    "peak_tflops_fp16": "DOUBLE",
    "peak_tflops_bf16": "DOUBLE",
    "copy_bandwidth_gbs": "DOUBLE",
    "calibrated_at": "TIMESTAMP",
    "first_seen": "TIMESTAMP NOT NULL",
}

CAMPAIGN_COLUMNS: dict[str, str] = {
    "campaign_id": "VARCHAR PRIMARY KEY",
    "device_id": "VARCHAR",
    "family": "VARCHAR",
    "command": "VARCHAR",
    "host": "VARCHAR",
    "started_at": "TIMESTAMP NOT NULL",
    "finished_at": "TIMESTAMP",
    "status": "VARCHAR NOT NULL",  # running / finished / interrupted
    "planned": "INTEGER",
    "written": "INTEGER",
}

# Added by migration 1 -> 2: how energy was measured ('busy-queue': the GPU kept busy while
# NVML is read). NULL on rows from the first energy loop, which left the GPU idle between
# batches (diluted power, inflated energy per call): do not train power models on those.
MEASUREMENT_COLUMNS_V2: dict[str, str] = {"energy_method": "VARCHAR"}

# Added by migration 2 -> 3: the problem's named sizes as a JSON object, for every family
# (m, n, k keep GEMM's and RMSNorm's; decode attention has batch, heads, kv_heads, context and
# head_dim): ``json_extract(sizes, '$.context')`` in SQL. Filled from ``shape`` when a row
# comes without it.
MEASUREMENT_COLUMNS_V3: dict[str, str] = {"sizes": "VARCHAR"}


def sizes_from_shape(shape: str) -> str:
    """SQL turning a canonical shape column (``m=16,n=32``) into its sizes JSON object."""
    pairs = (f"list_transform(string_split({shape}, ','), lambda x: '\"' || split_part(x, '=', 1) "
             f"|| '\":' || split_part(x, '=', 2))")
    return f"'{{' || array_to_string({pairs}, ',') || '}}'"


# Added by migration 3 -> 4: the ``autotune`` decorator's state for kernels of no family
# (perftune.tune.autotune). A kernel is its name and a hash of its source; a record holds for one
# device and software key (torch, Triton, CUDA). ``tuning_key`` is Triton's autotune key (the
# key arguments' values and the tensor arguments' dtypes) as a JSON list.
AUTOTUNE_MEASUREMENT_COLUMNS: dict[str, str] = {
    "key": "VARCHAR PRIMARY KEY",  # hash of the columns up to config
    "kernel": "VARCHAR NOT NULL",
    "source_hash": "VARCHAR NOT NULL",
    "device_id": "VARCHAR NOT NULL",
    "software_key": "VARCHAR NOT NULL",
    "tuning_key": "VARCHAR NOT NULL",
    "key_values": "VARCHAR NOT NULL",  # JSON object: key argument -> value
    "config": "VARCHAR NOT NULL",  # JSON object: kwargs, num_warps, num_stages, ...
    "features": "VARCHAR",  # JSON object: derived features (programs, programs per SM)
    "runtime_ms": "DOUBLE",  # NULL: the config failed (out of resources)
    "timer": "VARCHAR NOT NULL",
    "measured_at": "TIMESTAMP NOT NULL",
}
AUTOTUNE_CHOICE_COLUMNS: dict[str, str] = {
    "key": "VARCHAR PRIMARY KEY",  # hash of kernel, source_hash, device, software, tuning key
    "kernel": "VARCHAR NOT NULL",
    "source_hash": "VARCHAR NOT NULL",
    "device_id": "VARCHAR NOT NULL",
    "software_key": "VARCHAR NOT NULL",
    "tuning_key": "VARCHAR NOT NULL",
    "config": "VARCHAR NOT NULL",
    "runtime_ms": "DOUBLE",
    "configs": "INTEGER NOT NULL",  # the configs the kernel offers
    "measured": "INTEGER NOT NULL",  # how many of them were timed for this key
    "ranked_by": "VARCHAR NOT NULL",  # 'all', 'family:<name>' or 'learned'
    "chosen_at": "TIMESTAMP NOT NULL",
}

# Added by migration 4 -> 5: campaigns run on a cluster (perftune.collect.campaign). A run holds
# its spec (TOML text, so that ``perftune campaign resume`` needs nothing else); its measuring
# happens in ordinary ``campaigns`` rows, one per device and family, tied to it by ``run_id``.
# Events record what went wrong on the way: a lost worker, a failed chunk, a quarantined GPU.
CAMPAIGN_COLUMNS_V5: dict[str, str] = {"run_id": "VARCHAR"}
CAMPAIGN_RUN_COLUMNS: dict[str, str] = {
    "run_id": "VARCHAR PRIMARY KEY",
    "name": "VARCHAR NOT NULL",
    "spec": "VARCHAR NOT NULL",  # the spec file's TOML text
    "spec_path": "VARCHAR",
    "cluster": "VARCHAR",
    "command": "VARCHAR",
    "host": "VARCHAR",
    "status": "VARCHAR NOT NULL",  # running / finished / interrupted
    "started_at": "TIMESTAMP NOT NULL",
    "finished_at": "TIMESTAMP",
}
CAMPAIGN_EVENT_COLUMNS: dict[str, str] = {
    "key": "VARCHAR PRIMARY KEY",  # run_id:sequence
    "run_id": "VARCHAR NOT NULL",
    "happened_at": "TIMESTAMP NOT NULL",
    "event": "VARCHAR NOT NULL",  # worker_lost / chunk_failed / quarantined / interrupted
    "worker": "VARCHAR",
    "device_id": "VARCHAR",
    "detail": "VARCHAR",
}

# Added by migration 5 -> 6: tune jobs the service queues for workers (perftune.store.jobs). A
# job measures one problem on one device; one open (queued or running) job per problem.
JOB_STATUSES = ("queued", "running", "done", "failed")
TUNE_JOB_COLUMNS: dict[str, str] = {
    "job_id": "VARCHAR PRIMARY KEY",
    "family": "VARCHAR NOT NULL",
    "shape": "VARCHAR NOT NULL",
    "sizes": "VARCHAR NOT NULL",  # JSON object: size name -> value
    "dtype": "VARCHAR NOT NULL",
    "device_id": "VARCHAR NOT NULL",
    "budget": "INTEGER NOT NULL",
    "status": "VARCHAR NOT NULL",  # queued / running / done / failed
    "created_at": "TIMESTAMP NOT NULL",
    "claimed_by": "VARCHAR",
    "claimed_at": "TIMESTAMP",
    "heartbeat_at": "TIMESTAMP",
    "attempts": "INTEGER NOT NULL",
    "finished_at": "TIMESTAMP",
    "result": "VARCHAR",  # JSON object: the worker's answer
    "error": "VARCHAR",
}

# Added by migration 6 -> 7: the autotune decorator's energy objective (``objective="energy"``):
# energy per call of a measured config, and of the chosen one, and what a choice minimised.
AUTOTUNE_ENERGY_COLUMNS: dict[str, str] = {"energy_per_call_j": "DOUBLE"}
AUTOTUNE_CHOICE_COLUMNS_V7: dict[str, str] = {"energy_per_call_j": "DOUBLE",
                                              "objective": "VARCHAR"}

_TABLES_V1: dict[str, dict[str, str]] = {
    "devices": DEVICE_COLUMNS,
    "campaigns": CAMPAIGN_COLUMNS,
    "measurements": MEASUREMENT_COLUMNS,
}

TABLES: dict[str, dict[str, str]] = {
    **_TABLES_V1,
    "campaigns": {**CAMPAIGN_COLUMNS, **CAMPAIGN_COLUMNS_V5},
    "campaign_runs": CAMPAIGN_RUN_COLUMNS,
    "campaign_events": CAMPAIGN_EVENT_COLUMNS,
    "measurements": {**MEASUREMENT_COLUMNS, **MEASUREMENT_COLUMNS_V2, **MEASUREMENT_COLUMNS_V3},
    "autotune_measurements": {**AUTOTUNE_MEASUREMENT_COLUMNS, **AUTOTUNE_ENERGY_COLUMNS},
    "autotune_choices": {**AUTOTUNE_CHOICE_COLUMNS, **AUTOTUNE_CHOICE_COLUMNS_V7},
    "tune_jobs": TUNE_JOB_COLUMNS,
}


def _create(table: str, columns: dict[str, str]) -> str:
    body = ",\n  ".join(f"{name} {sql_type}" for name, sql_type in columns.items())
    return f"CREATE TABLE {table} (\n  {body}\n)"


MIGRATIONS: list[list[str]] = [
    # 0 -> 1: the first schema.
    [
        *(_create(table, columns) for table, columns in _TABLES_V1.items()),
        "CREATE INDEX measurements_problem ON measurements (device_id, family, dtype, shape)",
    ],
    # 1 -> 2: energy_method.
    [f"ALTER TABLE measurements ADD COLUMN {name} {sql_type}"
     for name, sql_type in MEASUREMENT_COLUMNS_V2.items()],
    # 2 -> 3: sizes, filled for the stored rows.
    ["ALTER TABLE measurements ADD COLUMN sizes VARCHAR",
     f"UPDATE measurements SET sizes = {sizes_from_shape('shape')}"],
    # 3 -> 4: the autotune decorator's measurements and choices.
    [_create("autotune_measurements", AUTOTUNE_MEASUREMENT_COLUMNS),
     _create("autotune_choices", AUTOTUNE_CHOICE_COLUMNS),
     "CREATE INDEX autotune_measurements_kernel ON autotune_measurements "
     "(kernel, source_hash, device_id, software_key)"],
    # 4 -> 5: campaigns on a cluster.
    ["ALTER TABLE campaigns ADD COLUMN run_id VARCHAR",
     _create("campaign_runs", CAMPAIGN_RUN_COLUMNS),
     _create("campaign_events", CAMPAIGN_EVENT_COLUMNS)],
    # 5 -> 6: tune jobs.
    [_create("tune_jobs", TUNE_JOB_COLUMNS),
     "CREATE INDEX tune_jobs_problem ON tune_jobs (family, shape, dtype, device_id, status)"],
    # 6 -> 7: the autotune decorator's energy objective.
    ["ALTER TABLE autotune_measurements ADD COLUMN energy_per_call_j DOUBLE",
     "ALTER TABLE autotune_choices ADD COLUMN energy_per_call_j DOUBLE",
     "ALTER TABLE autotune_choices ADD COLUMN objective VARCHAR DEFAULT 'time'"],
]

SCHEMA_VERSION = len(MIGRATIONS)
