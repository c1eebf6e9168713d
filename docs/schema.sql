-- Generated from src/store/migrations by tests/history.rs (UPDATE_EXPECT=1 to refresh).
CREATE VIEW requests_per_day AS
SELECT substr(started_at, 1, 10) AS day, count(*) AS runs, sum(http_requests) AS http_requests,
       sum(status = 'failed') AS failed_runs, sum(changes) AS changes,
       sum(idp_requests) AS idp_requests, sum(rate_limited_responses) AS rate_limited_responses,
       max(ratelimit_day_limit) AS ratelimit_day_limit,
       min(ratelimit_day_remaining) AS min_ratelimit_day_remaining
FROM sync_runs GROUP BY 1;

CREATE VIEW sync_health AS
SELECT h.*,
       (SELECT r.started_at FROM sync_runs r
         WHERE r.account_id = h.account_id AND r.status = 'failed'
           AND r.run_id > coalesce((SELECT max(s.run_id) FROM sync_runs s
                                    WHERE s.account_id = h.account_id AND s.status = 'ok'), 0)
         ORDER BY r.run_id LIMIT 1) AS failing_since,
       (SELECT r.error_kind || ': ' || r.error_message FROM sync_runs r
         WHERE r.account_id = h.account_id AND r.status = 'failed'
         ORDER BY r.run_id DESC LIMIT 1) AS last_error,
       (SELECT coalesce(r.finished_at, r.started_at) FROM sync_runs r
         WHERE r.account_id = h.account_id AND r.status = 'failed'
         ORDER BY r.run_id DESC LIMIT 1) AS last_error_at,
       (SELECT count(*) FROM vehicles v
         WHERE v.account_id = h.account_id AND v.removed_at IS NULL) AS vehicles
FROM (
    SELECT a.account_id, a.name AS account, a.brand, a.state,
           CASE a.state WHEN 'needs_reauth' THEN 1 WHEN 'failing' THEN 2 WHEN 'unknown' THEN 3
                        ELSE 4 END AS severity,
           a.state_reason,
           (SELECT max(r.started_at) FROM sync_runs r WHERE r.account_id = a.account_id) AS last_run_at,
           (SELECT r.status FROM sync_runs r WHERE r.account_id = a.account_id
             ORDER BY r.run_id DESC LIMIT 1) AS last_run_status,
           (SELECT max(r.finished_at) FROM sync_runs r
             WHERE r.account_id = a.account_id AND r.status = 'ok') AS last_success_at,
           (SELECT count(*) FROM sync_runs r
             WHERE r.account_id = a.account_id AND r.status = 'failed'
               AND r.run_id > coalesce((SELECT max(s.run_id) FROM sync_runs s
                                        WHERE s.account_id = a.account_id AND s.status = 'ok'), 0))
             AS consecutive_failures
    FROM accounts AS a
) AS h
ORDER BY h.severity, h.consecutive_failures DESC, h.account;

CREATE VIEW vehicle_change_runs AS
SELECT c.run_id,
       max(c.observed_at) AS observed_at,
       a.name AS account,
       c.vin,
       group_concat(DISTINCT c.kind) AS kinds,
       count(c.change_id) AS changes,
       group_concat(DISTINCT CASE
           WHEN c.field IS NULL THEN NULL
           WHEN rtrim(c.field, '0123456789') != c.field AND substr(rtrim(c.field, '0123456789'), -1) = '/'
               THEN rtrim(rtrim(c.field, '0123456789'), '/')
           ELSE c.field END) AS fields,
       max(CASE WHEN c.field = '/pictures/0' AND instr(json_extract(c.old_value, '$'), 'color=') > 0 THEN
           substr(substr(json_extract(c.old_value, '$'), instr(json_extract(c.old_value, '$'), 'color=') + 6), 1,
                  instr(substr(json_extract(c.old_value, '$'), instr(json_extract(c.old_value, '$'), 'color=') + 6) || '&', '&') - 1)
           END) AS old_colour,
       max(CASE WHEN c.field = '/pictures/0' AND instr(json_extract(c.new_value, '$'), 'color=') > 0 THEN
           substr(substr(json_extract(c.new_value, '$'), instr(json_extract(c.new_value, '$'), 'color=') + 6), 1,
                  instr(substr(json_extract(c.new_value, '$'), instr(json_extract(c.new_value, '$'), 'color=') + 6) || '&', '&') - 1)
           END) AS new_colour
FROM vehicle_changes AS c JOIN accounts AS a USING (account_id)
GROUP BY c.run_id, c.account_id, c.vehicle_id;

CREATE VIEW vehicle_current AS
SELECT a.name AS account, a.brand AS account_brand, v.account_id, v.vehicle_id, v.vin, v.brand,
       v.motorization, v.label, v.first_seen_at,
       CASE WHEN NOT EXISTS
                (SELECT 1 FROM vehicle_absences x WHERE x.account_id = v.account_id AND x.vehicle_id = v.vehicle_id)
            THEN coalesce(a.last_sync_at, v.listed_until) ELSE v.listed_until END AS last_seen_at,
       v.data
FROM vehicles AS v JOIN accounts AS a USING (account_id)
WHERE v.removed_at IS NULL;

CREATE VIEW vehicle_history AS
SELECT c.change_id, c.observed_at, a.name AS account, c.vin, c.kind, c.field,
       CASE WHEN c.kind = 'changed' THEN c.old_value END AS old_value,
       CASE WHEN c.kind = 'changed' THEN c.new_value END AS new_value,
       c.run_id
FROM vehicle_changes AS c JOIN accounts AS a USING (account_id);

CREATE VIEW vehicle_list AS
SELECT a.name AS account,
       v.vin,
       CASE lower(replace(replace(coalesce(v.brand, a.brand), 'Ë', 'e'), 'ë', 'e'))
           WHEN 'peugeot' THEN 'Peugeot' WHEN 'citroen' THEN 'Citroen' WHEN 'ds' THEN 'DS'
           WHEN 'opel' THEN 'Opel' WHEN 'vauxhall' THEN 'Vauxhall'
           ELSE coalesce(v.brand, a.brand) END AS brand,
       v.motorization,
       v.label,
       CASE WHEN instr(json_extract(v.data, '$.pictures[0]'), 'color=') > 0 THEN
           substr(substr(json_extract(v.data, '$.pictures[0]'),
                         instr(json_extract(v.data, '$.pictures[0]'), 'color=') + 6), 1,
                  instr(substr(json_extract(v.data, '$.pictures[0]'),
                               instr(json_extract(v.data, '$.pictures[0]'), 'color=') + 6) || '&', '&') - 1)
       END AS colour,
       CASE WHEN instr(json_extract(v.data, '$.pictures[0]'), 'version=') > 0 THEN
           substr(substr(json_extract(v.data, '$.pictures[0]'),
                         instr(json_extract(v.data, '$.pictures[0]'), 'version=') + 8), 1,
                  instr(substr(json_extract(v.data, '$.pictures[0]'),
                               instr(json_extract(v.data, '$.pictures[0]'), 'version=') + 8) || '&', '&') - 1)
       END AS version_code,
       v.first_seen_at,
       CASE WHEN v.removed_at IS NULL AND NOT EXISTS
                (SELECT 1 FROM vehicle_absences x WHERE x.account_id = v.account_id AND x.vehicle_id = v.vehicle_id)
            THEN coalesce(a.last_sync_at, v.listed_until) ELSE v.listed_until END AS last_seen_at,
       v.removed_at,
       (SELECT count(*) FROM vehicle_changes c
         WHERE c.account_id = v.account_id AND c.vehicle_id = v.vehicle_id AND c.kind = 'changed') AS changes,
       (SELECT max(c.observed_at) FROM vehicle_changes c
         WHERE c.account_id = v.account_id AND c.vehicle_id = v.vehicle_id) AS last_change_at
FROM vehicles AS v JOIN accounts AS a USING (account_id);

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

CREATE TABLE charging_sessions (
    session_id       INTEGER PRIMARY KEY,
    account_id       INTEGER NOT NULL REFERENCES accounts (account_id),
    vin              TEXT NOT NULL,
    started_ts       INTEGER NOT NULL,
    ended_ts         INTEGER,
    start_soc        REAL,
    end_soc          REAL,
    start_range_km   INTEGER,
    end_range_km     INTEGER,
    max_rate_kmh     REAL,
    charging_mode    TEXT,
    latitude         REAL,
    longitude        REAL,
    odometer_km      REAL,
    energy_added_kwh REAL,
    end_reason       TEXT,
    CHECK (ended_ts IS NULL OR ended_ts >= started_ts)
);

CREATE TABLE maintenance (
    maintenance_id INTEGER PRIMARY KEY,
    account_id     INTEGER NOT NULL REFERENCES accounts (account_id),
    vin            TEXT NOT NULL,
    observed_ts    INTEGER NOT NULL,
    days_before    INTEGER,
    km_before      REAL
);

CREATE TABLE status_bodies (
    body_id          INTEGER PRIMARY KEY,
    body_hash        BLOB NOT NULL,
    account_id       INTEGER NOT NULL REFERENCES accounts (account_id),
    vin              TEXT NOT NULL,
    first_fetched_ts INTEGER NOT NULL,
    base_id          INTEGER REFERENCES status_bodies (body_id),
    body             BLOB NOT NULL,
    CHECK ((base_id IS NULL AND typeof(body) = 'text' AND json_valid(body))
        OR (base_id IS NOT NULL AND typeof(body) = 'blob')),
    UNIQUE (account_id, body_hash)
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
, idp_requests INTEGER NOT NULL DEFAULT 0, rate_limited_responses INTEGER NOT NULL DEFAULT 0, ratelimit_day_limit INTEGER, ratelimit_day_remaining INTEGER, ratelimit_burst_limit INTEGER, ratelimit_burst_remaining INTEGER);

CREATE TABLE telemetry_endpoints (
    account_id           INTEGER NOT NULL REFERENCES accounts (account_id),
    vin                  TEXT NOT NULL,
    endpoint             TEXT NOT NULL CHECK (endpoint IN ('status', 'trips', 'alerts', 'maintenance')),
    last_attempt_ts      INTEGER,
    last_success_ts      INTEGER,
    next_due_ts          INTEGER,
    unavailable_since_ts INTEGER,
    unavailable_reason   TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    bookmark             TEXT,
    PRIMARY KEY (account_id, vin, endpoint)
) WITHOUT ROWID;

CREATE TABLE trips (
    account_id                INTEGER NOT NULL REFERENCES accounts (account_id),
    vin                       TEXT NOT NULL,
    trip_id                   TEXT NOT NULL,
    started_ts                INTEGER NOT NULL,
    ended_ts                  INTEGER,
    distance_km               REAL,
    duration_s                INTEGER,
    start_odometer_km         REAL,
    start_soc                 REAL,
    end_soc                   REAL,
    electric_consumption      REAL,
    electric_avg_consumption  REAL,
    fuel_consumption          REAL,
    fuel_avg_consumption      REAL,
    avg_speed_kmh             REAL,
    max_speed_kmh             REAL,
    start_latitude            REAL,
    start_longitude           REAL,
    end_latitude              REAL,
    end_longitude             REAL,
    done                      INTEGER CHECK (done IN (0, 1)),
    data                      TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (account_id, vin, trip_id)
);

CREATE TABLE vehicle_absences (
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    vehicle_id TEXT NOT NULL,
    since      TEXT NOT NULL,
    run_id     INTEGER NOT NULL REFERENCES sync_runs (run_id),
    PRIMARY KEY (account_id, vehicle_id)
) WITHOUT ROWID;

CREATE TABLE vehicle_alerts (
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    vin        TEXT NOT NULL,
    alert_id   TEXT NOT NULL,
    type       TEXT,
    severity   TEXT,
    active     INTEGER CHECK (active IN (0, 1)),
    started_ts INTEGER,
    ended_ts   INTEGER,
    PRIMARY KEY (account_id, vin, alert_id)
);

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

CREATE TABLE vehicle_states (
    state_id   INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    vin        TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('driving', 'charging', 'parked', 'unreachable')),
    started_ts INTEGER NOT NULL,
    ended_ts   INTEGER,
    CHECK (ended_ts IS NULL OR ended_ts >= started_ts)
);

CREATE TABLE vehicle_status (
    status_id              INTEGER PRIMARY KEY,
    account_id             INTEGER NOT NULL REFERENCES accounts (account_id),
    vin                    TEXT NOT NULL,
    observed_ts            INTEGER NOT NULL,
    first_fetched_ts       INTEGER NOT NULL,
    last_fetched_ts        INTEGER NOT NULL,
    soc                    REAL,
    range_km               INTEGER,
    fuel_pct               REAL,
    fuel_range_km          INTEGER,
    odometer_km            REAL,
    charging_status        TEXT,
    plugged                INTEGER CHECK (plugged IN (0, 1)),
    charging_rate_kmh      REAL,
    charging_mode          TEXT,
    charging_remaining_min INTEGER,
    latitude               REAL,
    longitude              REAL,
    position_ts            INTEGER,
    ignition               TEXT,
    moving                 INTEGER CHECK (moving IN (0, 1)),
    speed_kmh              REAL,
    outside_temp_c         REAL,
    doors_locked           INTEGER CHECK (doors_locked IN (0, 1)),
    body_hash              BLOB NOT NULL,
    CHECK (last_fetched_ts >= first_fetched_ts)
);

CREATE TABLE vehicles (
    account_id    INTEGER NOT NULL REFERENCES accounts (account_id),
    vehicle_id    TEXT NOT NULL,
    vin           TEXT,
    brand         TEXT,
    motorization  TEXT,
    label         TEXT,
    first_seen_at TEXT NOT NULL,
    listed_until  TEXT NOT NULL,
    removed_at    TEXT,
    -- A hash of `data` (XXH3-128), read by every poll to skip unchanged vehicles without parsing
    -- them; a hint only (NULL or a mismatch means "compare the JSON").
    data_hash   BLOB,
    -- Last: a poll rewrites last_seen_at in place and reads data_hash; both stay on the first
    -- page of the record, away from the overflow pages that hold the JSON.
    data          TEXT NOT NULL CHECK (json_valid(data)),
    PRIMARY KEY (account_id, vehicle_id)
);

CREATE INDEX charging_sessions_by_vin_time ON charging_sessions (vin, started_ts);

CREATE UNIQUE INDEX charging_sessions_one_open ON charging_sessions (account_id, vin) WHERE ended_ts IS NULL;

CREATE INDEX maintenance_by_vin_time ON maintenance (vin, observed_ts);

CREATE INDEX status_bodies_bases ON status_bodies (account_id, vin, body_id) WHERE base_id IS NULL;

CREATE INDEX status_bodies_by_base ON status_bodies (base_id) WHERE base_id IS NOT NULL;

CREATE INDEX sync_runs_by_account ON sync_runs (account_id, run_id);

CREATE INDEX sync_runs_by_start ON sync_runs (started_at);

CREATE INDEX trips_by_vin_time ON trips (vin, started_ts);

CREATE INDEX vehicle_alerts_by_vin_time ON vehicle_alerts (vin, started_ts);

CREATE INDEX vehicle_changes_by_run ON vehicle_changes (run_id);

CREATE INDEX vehicle_changes_by_time ON vehicle_changes (observed_at);

CREATE INDEX vehicle_changes_by_vehicle ON vehicle_changes (account_id, vehicle_id, change_id);

CREATE INDEX vehicle_changes_by_vin ON vehicle_changes (vin, observed_at);

CREATE INDEX vehicle_states_by_vin_time ON vehicle_states (vin, started_ts);

CREATE UNIQUE INDEX vehicle_states_one_open ON vehicle_states (account_id, vin) WHERE ended_ts IS NULL;

CREATE INDEX vehicle_status_by_vin_time ON vehicle_status (vin, observed_ts);

CREATE INDEX vehicles_by_vin ON vehicles (vin);
