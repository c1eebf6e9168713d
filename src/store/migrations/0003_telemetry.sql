-- 0003: vehicle telemetry. What the cars do (state of charge, range, odometer, charging, position,
-- trips, alerts, maintenance), read from /user/vehicles/{id}/status, /trips, /alerts and
-- /maintenance. Never from a wake-up: reading the API only reads Stellantis' servers.
--
-- Conventions of these tables (the older ones keep RFC 3339 text): time columns are INTEGER Unix
-- seconds, UTC, named *_ts, which Grafana's SQLite data source groups and filters on. Typed
-- values live in base tables, because DuckDB's SQLite reader types every view column as text.
-- Percentages, kilometres of odometer and distance, rates and temperatures are REAL; ranges,
-- minutes and seconds INTEGER; flags INTEGER 0/1; states and modes TEXT as the API spells them.
-- Every table carries account_id and vin (a vehicle is (account_id, vin) here: the API's 193-
-- character id is kept once, in `vehicles`).

-- Each distinct /status body once, keyed by the XXH3-128 hash of its canonical form (object keys
-- sorted, arrays in order), so an identical answer is stored once however often it is fetched.
CREATE TABLE status_bodies (
    body_hash        BLOB PRIMARY KEY,
    account_id       INTEGER NOT NULL REFERENCES accounts (account_id),
    vin              TEXT NOT NULL,
    first_fetched_ts INTEGER NOT NULL,
    body             TEXT NOT NULL CHECK (json_valid(body))
) WITHOUT ROWID;
CREATE INDEX status_bodies_by_vin_time ON status_bodies (vin, first_fetched_ts);

-- One row per distinct observation, not per fetch: a poll that returns the same observation only
-- moves last_fetched_ts. observed_ts is the vehicle's own newest block time.
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
CREATE INDEX vehicle_status_by_vin_time ON vehicle_status (vin, observed_ts);
CREATE INDEX vehicle_status_by_account_time ON vehicle_status (account_id, vin, observed_ts);

-- Intervals: driving, charging, parked or unreachable. ended_ts is NULL while open; at most one
-- open interval per vehicle.
CREATE TABLE vehicle_states (
    state_id   INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    vin        TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('driving', 'charging', 'parked', 'unreachable')),
    started_ts INTEGER NOT NULL,
    ended_ts   INTEGER,
    CHECK (ended_ts IS NULL OR ended_ts >= started_ts)
);
CREATE UNIQUE INDEX vehicle_states_one_open ON vehicle_states (account_id, vin) WHERE ended_ts IS NULL;
CREATE INDEX vehicle_states_by_vin_time ON vehicle_states (vin, started_ts);

-- Charging sessions derived from the observations; ended_ts is NULL while charging; at most one
-- open session per vehicle. energy_added_kwh comes from the battery's capacity where the body
-- gives it, else NULL. end_reason: finished, stopped, unplugged, failure, gap (a gap in the data
-- longer than the configured limit ended it) or unknown.
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
CREATE UNIQUE INDEX charging_sessions_one_open ON charging_sessions (account_id, vin) WHERE ended_ts IS NULL;
CREATE INDEX charging_sessions_by_vin_time ON charging_sessions (vin, started_ts);

-- Trips as the API reports them (/trips), each fetched once.
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
CREATE INDEX trips_by_vin_time ON trips (vin, started_ts);

-- Alerts as the API reports them (/alerts), one row per alert, updated as it ends.
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
CREATE INDEX vehicle_alerts_by_vin_time ON vehicle_alerts (vin, started_ts);

-- /maintenance: a row only when a value changes.
CREATE TABLE maintenance (
    maintenance_id INTEGER PRIMARY KEY,
    account_id     INTEGER NOT NULL REFERENCES accounts (account_id),
    vin            TEXT NOT NULL,
    observed_ts    INTEGER NOT NULL,
    days_before    INTEGER,
    km_before      REAL
);
CREATE INDEX maintenance_by_vin_time ON maintenance (vin, observed_ts);

-- The poller's bookkeeping per vehicle and endpoint, so `--once` from cron knows what is due and a
-- vehicle whose endpoint answers 403/404 is visibly unavailable (and backed off), not failing.
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
