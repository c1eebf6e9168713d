-- 0006: raw /status bodies stored compactly (they were 90 % of the file: about 2,900 bytes each,
-- dozens a day per vehicle). A vehicle's bodies differ in a few values and timestamps, so one of
-- them is kept as JSON text (a base, base_id NULL) and the others as zlib streams (RFC 1950) whose
-- preset dictionary is the base's text: about 250 bytes each. src/store/bodies.rs encodes and
-- decodes; docs/schema.md shows how to read them from Python. Every existing body becomes a base.
-- Rows now have an integer id, so the table appends in order instead of splitting pages at
-- random hashes. A body belongs to its account: two accounts that see the same car store it once
-- each (it used to be stored once, under whichever account fetched it first, so moving or
-- removing one account took the other's bodies with it); (account_id, body_hash) is unique, and
-- vehicle_status (account_id, body_hash) finds its body. Two indexes that no query needs are
-- dropped: vehicle_status_by_account_time (vehicle_status_by_vin_time serves the same lookups)
-- and the old status_bodies_by_vin_time.
ALTER TABLE status_bodies RENAME TO status_bodies_0003;
DROP INDEX status_bodies_by_vin_time;
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
INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, base_id, body)
SELECT body_hash, account_id, vin, first_fetched_ts, NULL, body
FROM status_bodies_0003 ORDER BY first_fetched_ts, body_hash;
-- A body another account also referenced gets that account's own copy.
INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, base_id, body)
SELECT s.body_hash, s.account_id, min(s.vin), min(b.first_fetched_ts), NULL, min(b.body)
FROM vehicle_status s JOIN status_bodies_0003 b ON b.body_hash = s.body_hash
WHERE s.account_id <> b.account_id
GROUP BY s.account_id, s.body_hash;
DROP TABLE status_bodies_0003;
DROP INDEX vehicle_status_by_account_time;
-- A vehicle's current base, and the bodies that depend on a base (retention keeps those bases).
CREATE INDEX status_bodies_bases ON status_bodies (account_id, vin, body_id) WHERE base_id IS NULL;
CREATE INDEX status_bodies_by_base ON status_bodies (base_id) WHERE base_id IS NOT NULL;
