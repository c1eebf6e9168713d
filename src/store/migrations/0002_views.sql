-- 0002: views for the questions analysts ask first, so Datasette, DuckDB and Grafana users need
-- no joins for them.

-- Vehicles each account has now.
CREATE VIEW vehicle_current AS
SELECT a.name AS account, a.brand AS account_brand, v.account_id, v.vehicle_id, v.vin, v.brand,
       v.motorization, v.label, v.first_seen_at, v.last_seen_at, v.data
FROM vehicles AS v JOIN accounts AS a USING (account_id)
WHERE v.removed_at IS NULL;

-- Per account: last run, last success, consecutive failures since it, state, vehicles.
CREATE VIEW sync_health AS
SELECT a.account_id, a.name AS account, a.brand, a.state, a.state_reason,
       (SELECT max(r.started_at) FROM sync_runs r WHERE r.account_id = a.account_id) AS last_run_at,
       (SELECT r.status FROM sync_runs r WHERE r.account_id = a.account_id
         ORDER BY r.run_id DESC LIMIT 1) AS last_run_status,
       (SELECT max(r.finished_at) FROM sync_runs r
         WHERE r.account_id = a.account_id AND r.status = 'ok') AS last_success_at,
       (SELECT count(*) FROM sync_runs r
         WHERE r.account_id = a.account_id AND r.status = 'failed'
           AND r.run_id > coalesce((SELECT max(s.run_id) FROM sync_runs s
                                    WHERE s.account_id = a.account_id AND s.status = 'ok'), 0))
         AS consecutive_failures,
       (SELECT r.error_kind || ': ' || r.error_message FROM sync_runs r
         WHERE r.account_id = a.account_id AND r.status = 'failed'
         ORDER BY r.run_id DESC LIMIT 1) AS last_error,
       (SELECT count(*) FROM vehicles v
         WHERE v.account_id = a.account_id AND v.removed_at IS NULL) AS vehicles
FROM accounts AS a;

-- Every change with the account's name, newest last.
CREATE VIEW vehicle_history AS
SELECT c.change_id, c.observed_at, a.name AS account, c.vin, c.vehicle_id, c.kind, c.field,
       c.old_value, c.new_value, c.run_id
FROM vehicle_changes AS c JOIN accounts AS a USING (account_id);

-- Requests, runs and failures per UTC day.
CREATE VIEW requests_per_day AS
SELECT substr(started_at, 1, 10) AS day, count(*) AS runs, sum(http_requests) AS http_requests,
       sum(status = 'failed') AS failed_runs, sum(changes) AS changes
FROM sync_runs GROUP BY 1;
