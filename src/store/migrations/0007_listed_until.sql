-- 0007: a listing no longer rewrites every vehicle row. `vehicles.last_seen_at` was set to the
-- listing's time on every vehicle at every listing: at 100,000 vehicles that rewrote a page per
-- four vehicles (each row carries its JSON) and was most of a listing that changed nothing.
-- The column is now `listed_until`, written only when something about the vehicle changes: it
-- is exact for a vehicle no longer listed (removed, or missing from a listing of several pages),
-- and for a listed vehicle it may be older, since every listing since contained it. The time a
-- listed vehicle was last seen is its account's last successful listing (`accounts.last_sync_at`,
-- written in the same transaction as the listing), and the views give `last_seen_at` with its
-- old meaning: `vehicle_current` and `vehicle_list`. A query on `vehicles.last_seen_at` fails
-- ("no such column") instead of quietly reading a different value.
ALTER TABLE vehicles RENAME COLUMN last_seen_at TO listed_until;

DROP VIEW vehicle_current;
CREATE VIEW vehicle_current AS
SELECT a.name AS account, a.brand AS account_brand, v.account_id, v.vehicle_id, v.vin, v.brand,
       v.motorization, v.label, v.first_seen_at,
       CASE WHEN NOT EXISTS
                (SELECT 1 FROM vehicle_absences x WHERE x.account_id = v.account_id AND x.vehicle_id = v.vehicle_id)
            THEN coalesce(a.last_sync_at, v.listed_until) ELSE v.listed_until END AS last_seen_at,
       v.data
FROM vehicles AS v JOIN accounts AS a USING (account_id)
WHERE v.removed_at IS NULL;

-- 0005's view, with last_seen_at computed as above.
DROP VIEW vehicle_list;
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
