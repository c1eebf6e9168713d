-- 0003: a hash of each vehicle's stored JSON, so that a poll in which nothing changed compares
-- hashes instead of loading and parsing every vehicle's JSON. It is only a hint: NULL or a
-- mismatch makes the engine compare the JSON itself.
ALTER TABLE vehicles ADD COLUMN data_sha256 BLOB;
