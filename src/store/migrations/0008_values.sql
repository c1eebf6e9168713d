-- 0008: values in the units docs/schema.md documents, and one identity per vehicle.
-- Trip consumption: `avgConsumption` comes in Wh/100 km (electric) and cl/100 km (fuel) (official
-- schema `EnergyConsumption`, docs/api.md "Units"), and was stored as it came, 1000× and 100×
-- the documented kWh/100 km and l/100 km. The reader now converts; the rows stored before are
-- converted here (the raw item in `data` is unchanged).
UPDATE trips
SET electric_avg_consumption = electric_avg_consumption / 1000.0,
    fuel_avg_consumption = fuel_avg_consumption / 100.0
WHERE electric_avg_consumption IS NOT NULL OR fuel_avg_consumption IS NOT NULL;

-- A vehicle's identity does not depend on the case of its VIN or on whitespace around it: the
-- listing's VIN is now stored trimmed and in upper case (api::model::normalize_vin; SQLite's
-- upper() is ASCII-only, as is the code's). Rows stored before are normalized the same way. A
-- car whose VIN changed case had two identities: its duplicate open session and open state are
-- closed first (all but the newest, ended where the newest began, reason `unknown`), and a
-- bookkeeping row, trip or alert stored under both spellings is kept once.
UPDATE charging_sessions
SET ended_ts = (SELECT max(o.started_ts) FROM charging_sessions AS o
                WHERE o.account_id = charging_sessions.account_id AND o.ended_ts IS NULL
                  AND upper(trim(o.vin, ' ' || char(9, 10, 12, 13)))
                      = upper(trim(charging_sessions.vin, ' ' || char(9, 10, 12, 13)))),
    end_reason = 'unknown'
WHERE ended_ts IS NULL
  AND EXISTS (SELECT 1 FROM charging_sessions AS o
              WHERE o.account_id = charging_sessions.account_id AND o.ended_ts IS NULL
                AND upper(trim(o.vin, ' ' || char(9, 10, 12, 13)))
                    = upper(trim(charging_sessions.vin, ' ' || char(9, 10, 12, 13)))
                AND (o.started_ts, o.session_id) > (charging_sessions.started_ts, charging_sessions.session_id));
UPDATE vehicle_states
SET ended_ts = (SELECT max(o.started_ts) FROM vehicle_states AS o
                WHERE o.account_id = vehicle_states.account_id AND o.ended_ts IS NULL
                  AND upper(trim(o.vin, ' ' || char(9, 10, 12, 13)))
                      = upper(trim(vehicle_states.vin, ' ' || char(9, 10, 12, 13))))
WHERE ended_ts IS NULL
  AND EXISTS (SELECT 1 FROM vehicle_states AS o
              WHERE o.account_id = vehicle_states.account_id AND o.ended_ts IS NULL
                AND upper(trim(o.vin, ' ' || char(9, 10, 12, 13)))
                    = upper(trim(vehicle_states.vin, ' ' || char(9, 10, 12, 13)))
                AND (o.started_ts, o.state_id) > (vehicle_states.started_ts, vehicle_states.state_id));

UPDATE vehicles SET vin = nullif(upper(trim(vin, ' ' || char(9, 10, 12, 13))), '') WHERE vin IS NOT NULL;
UPDATE vehicle_changes SET vin = nullif(upper(trim(vin, ' ' || char(9, 10, 12, 13))), '') WHERE vin IS NOT NULL;
UPDATE vehicle_status SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE status_bodies SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE vehicle_states SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE charging_sessions SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE maintenance SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE OR IGNORE trips SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
DELETE FROM trips WHERE vin <> upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE OR IGNORE vehicle_alerts SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
DELETE FROM vehicle_alerts WHERE vin <> upper(trim(vin, ' ' || char(9, 10, 12, 13)));
UPDATE OR IGNORE telemetry_endpoints SET vin = upper(trim(vin, ' ' || char(9, 10, 12, 13)));
DELETE FROM telemetry_endpoints WHERE vin <> upper(trim(vin, ' ' || char(9, 10, 12, 13)));
