-- 0004: a vehicle absent from a listing of several pages is not yet removed. The list can change
-- between two page requests (a vehicle removed before page 2 shifts another one out of sight while
-- the total stays the same), so such a listing is not one snapshot: the absence is recorded here,
-- and the vehicle is recorded `removed` only when the next complete listing still lacks it (a
-- listing of one page is one answer of the server and removes at once). A row disappears when the
-- vehicle is seen again or recorded removed.
CREATE TABLE vehicle_absences (
    account_id INTEGER NOT NULL REFERENCES accounts (account_id),
    vehicle_id TEXT NOT NULL,
    since      TEXT NOT NULL,
    run_id     INTEGER NOT NULL REFERENCES sync_runs (run_id),
    PRIMARY KEY (account_id, vehicle_id)
) WITHOUT ROWID;
