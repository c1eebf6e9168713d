-- 0001: the change history. One row per account (no secrets, ever), one per sync run, one per
-- vehicle an account has ever had (its current state), and one per observed change.
-- Timestamps are RFC 3339 UTC text with milliseconds ('2026-11-28T08:15:38.123Z'), sortable as text.

CREATE TABLE accounts (
    account_id      INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    brand           TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'unknown'
                    CHECK (state IN ('unknown', 'ok', 'failing', 'needs_reauth')),
    state_reason    TEXT,
    created_at      TEXT NOT NULL,
    last_attempt_at TEXT,
    last_sync_at    TEXT
);

CREATE TABLE sync_runs (
    run_id        INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts (account_id),
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    status        TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
    error_kind    TEXT,
    error_message TEXT,
    http_requests INTEGER NOT NULL DEFAULT 0,
    vehicles_seen INTEGER,
    changes       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sync_runs_by_account ON sync_runs (account_id, run_id);
CREATE INDEX sync_runs_by_start ON sync_runs (started_at);

CREATE TABLE vehicles (
    account_id    INTEGER NOT NULL REFERENCES accounts (account_id),
    vehicle_id    TEXT NOT NULL,
    vin           TEXT,
    brand         TEXT,
    motorization  TEXT,
    label         TEXT,
    first_seen_at TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,
    removed_at    TEXT,
    -- A hash of `data` (XXH3-128), read by every poll to skip unchanged vehicles without parsing
    -- them; a hint only (NULL or a mismatch means "compare the JSON").
    data_hash   BLOB,
    -- Last: a poll rewrites last_seen_at in place and reads data_hash; both stay on the first
    -- page of the record, away from the overflow pages that hold the JSON.
    data          TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (account_id, vehicle_id)
);
CREATE INDEX vehicles_by_vin ON vehicles (vin);

CREATE TABLE vehicle_changes (
    change_id   INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES sync_runs (run_id),
    account_id  INTEGER NOT NULL REFERENCES accounts (account_id),
    vehicle_id  TEXT NOT NULL,
    vin         TEXT,
    observed_at TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('added', 'removed', 'changed')),
    field       TEXT,
    old_value   TEXT CHECK (old_value IS NULL OR json_valid(old_value)),
    new_value   TEXT CHECK (new_value IS NULL OR json_valid(new_value))
);
CREATE INDEX vehicle_changes_by_vehicle ON vehicle_changes (account_id, vehicle_id, change_id);
CREATE INDEX vehicle_changes_by_time ON vehicle_changes (observed_at);
CREATE INDEX vehicle_changes_by_vin ON vehicle_changes (vin, observed_at);
CREATE INDEX vehicle_changes_by_run ON vehicle_changes (run_id);
