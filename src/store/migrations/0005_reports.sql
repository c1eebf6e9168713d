-- 0005: reports. What a person browsing the database (Datasette, the sqlite3 shell, Grafana) asks
-- first, each answered by one view, with no 193-character vehicle id and no whole-vehicle JSON in
-- them (those stay in `vehicles` and `vehicle_changes`). Plus what the quota questions need: per run,
-- the identity-provider requests and the X-RateLimit-* values the API answered with.

-- Per run: token requests to the identity provider, 429 answers, and the last X-RateLimit-*
-- values seen (day = the sliding 24-hour quota, burst = the one-second quota). NULL: not answered
-- (older runs, or a run that made no API request).
ALTER TABLE sync_runs ADD COLUMN idp_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_runs ADD COLUMN rate_limited_responses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_runs ADD COLUMN ratelimit_day_limit INTEGER;
ALTER TABLE sync_runs ADD COLUMN ratelimit_day_remaining INTEGER;
ALTER TABLE sync_runs ADD COLUMN ratelimit_burst_limit INTEGER;
ALTER TABLE sync_runs ADD COLUMN ratelimit_burst_remaining INTEGER;

-- One spelling per brand, whatever case or accent the API used ('CITROEN', 'Citroën' → 'Citroen').
-- The colour code is the `color=` parameter of the picture URLs; the version code (model and
-- trim) their `version=` parameter.
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
       v.last_seen_at,
       v.removed_at,
       (SELECT count(*) FROM vehicle_changes c
         WHERE c.account_id = v.account_id AND c.vehicle_id = v.vehicle_id AND c.kind = 'changed') AS changes,
       (SELECT max(c.observed_at) FROM vehicle_changes c
         WHERE c.account_id = v.account_id AND c.vehicle_id = v.vehicle_id) AS last_change_at
FROM vehicles AS v JOIN accounts AS a USING (account_id);

-- Every change, readable: the vehicle by VIN, no whole-vehicle JSON (for `added` and `removed`
-- rows the values are NULL here; `vehicle_changes` keeps them). Replaces 0002's view.
DROP VIEW vehicle_history;
CREATE VIEW vehicle_history AS
SELECT c.change_id, c.observed_at, a.name AS account, c.vin, c.kind, c.field,
       CASE WHEN c.kind = 'changed' THEN c.old_value END AS old_value,
       CASE WHEN c.kind = 'changed' THEN c.new_value END AS new_value,
       c.run_id
FROM vehicle_changes AS c JOIN accounts AS a USING (account_id);

-- One row per vehicle per run that changed it: what happened, in one line. A re-spray is one row
-- (`/pictures` ×12, old and new colour), not twelve.
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

-- Per account, the worst first: needs_reauth, failing, unknown, ok. `failing_since` is the start
-- of the first failed run after the last success (NULL when the last run succeeded);
-- `last_error` and `last_error_at` are the latest failure's, however old (compare with
-- `last_success_at`). Replaces 0002's view; the old columns keep their names.
DROP VIEW sync_health;
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

-- Requests per UTC day, now with the identity provider's, the 429s, and the lowest daily quota
-- left that the API reported that day. Replaces 0002's view; the old columns keep their names.
DROP VIEW requests_per_day;
CREATE VIEW requests_per_day AS
SELECT substr(started_at, 1, 10) AS day, count(*) AS runs, sum(http_requests) AS http_requests,
       sum(status = 'failed') AS failed_runs, sum(changes) AS changes,
       sum(idp_requests) AS idp_requests, sum(rate_limited_responses) AS rate_limited_responses,
       max(ratelimit_day_limit) AS ratelimit_day_limit,
       min(ratelimit_day_remaining) AS min_ratelimit_day_remaining
FROM sync_runs GROUP BY 1;
