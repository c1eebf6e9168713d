//! Retention: how long raw telemetry bodies (`status_bodies`) are kept. Off unless
//! `[retention] status_bodies_max_age` is set; derived tables (`vehicle_status`, sessions, trips,
//! …) are never pruned.
//!
//! After a pass, bodies first fetched before the limit are deleted in small batches, one short
//! write transaction each, so the daemon's own writes interleave (what to keep is computed once
//! per run into a TEMP table: at 1,000,000 observations that takes about 0.7 s, and a batch of
//! 1,000 deletions then about 0.1 s). A body still referenced by the
//! newest `vehicle_status` row of its vehicle, or by any row fetched within the limit when the
//! run started, is never deleted (the newest observation stays explainable); an older
//! observation that a server sends again during a run may lose its body, which the writer
//! stores again the next time it is sent. Freed pages go back to the file system
//! with `PRAGMA incremental_vacuum` when the database uses `auto_vacuum = INCREMENTAL` (new
//! databases do; an older one needs a one-time `VACUUM`, see README "Operating it").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Db;

/// What one retention run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub bodies: u64,
    pub batches: u32,
    pub pages_freed: i64,
}

/// The bodies that must stay, computed once per run on the writer's connection (a TEMP table, so
/// nothing is written to the database): those of each vehicle's newest observation and of every
/// observation fetched within the limit. Returns the highest `status_id` it saw.
const KEEP: &str = "CREATE TEMP TABLE IF NOT EXISTS retention_keep_ids (id INTEGER PRIMARY KEY);
    DELETE FROM temp.retention_keep_ids;";
const KEEP_FILL: &str = "INSERT OR IGNORE INTO temp.retention_keep_ids
    SELECT b.body_id FROM vehicle_status s
    JOIN status_bodies b ON b.account_id = s.account_id AND b.body_hash = s.body_hash
    WHERE s.last_fetched_ts >= ?1
       OR s.observed_ts = (SELECT max(s2.observed_ts) FROM vehicle_status s2
                           WHERE s2.account_id = s.account_id AND s2.vin = s.vin)";

/// One batch. Rows added after the snapshot (`status_id > ?3`) are checked directly, so a body
/// that becomes referenced again meanwhile is kept. An older row's `last_fetched_ts` moves
/// while it is its vehicle's newest, which the snapshot already keeps, or when a server sends
/// that older observation again: if that happens during a run its body may still go, and the
/// writer stores it again the next time it is sent (src/store/telemetry.rs). A body that other
/// bodies are stored against (a base, or a link of a chain: src/store/bodies.rs) stays until
/// they are gone.
const DELETE_BATCH: &str = "DELETE FROM status_bodies WHERE body_id IN (
    SELECT b.body_id FROM status_bodies b
    WHERE b.first_fetched_ts < ?1
      AND b.body_id NOT IN (SELECT id FROM temp.retention_keep_ids)
      AND NOT EXISTS (SELECT 1 FROM vehicle_status s
                      WHERE s.status_id > ?3 AND s.account_id = b.account_id AND s.body_hash = b.body_hash)
      AND NOT EXISTS (SELECT 1 FROM status_bodies d WHERE d.base_id = b.body_id)
    LIMIT ?2)";

fn snapshot(conn: &rusqlite::Connection, cutoff: i64) -> rusqlite::Result<i64> {
    conn.execute_batch(KEEP)?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Deferred)?;
    let max: i64 = tx.query_row(
        "SELECT coalesce(max(status_id), 0) FROM vehicle_status",
        [],
        |r| r.get(0),
    )?;
    tx.execute(KEEP_FILL, [cutoff])?;
    tx.commit()?;
    Ok(max)
}

/// One batch in its own `BEGIN IMMEDIATE` transaction; returns the rows deleted.
fn batch(
    conn: &rusqlite::Connection,
    cutoff: i64,
    size: u32,
    seen: i64,
) -> rusqlite::Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(DELETE_BATCH, rusqlite::params![cutoff, size, seen])?;
    tx.commit()?;
    Ok(n)
}

/// Prunes bodies older than `max_age` in batches of `batch_size`, taking the writer's lock for
/// one batch at a time, then returns up to `vacuum_pages` free pages to the file system.
pub fn prune(
    db: &Arc<Mutex<Db>>,
    max_age: Duration,
    batch_size: u32,
    vacuum_pages: u32,
    now_unix: i64,
) -> Result<Pruned, String> {
    let cutoff = now_unix - i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    let mut done = Pruned::default();
    let seen = {
        let g = db.lock().unwrap_or_else(|e| e.into_inner());
        match snapshot(g.conn(), cutoff) {
            Ok(m) => m,
            // A database without the telemetry tables has nothing to prune.
            Err(e) if e.to_string().contains("no such table") => return Ok(done),
            Err(e) => return Err(format!("retention: reading what to keep: {e}")),
        }
    };
    loop {
        let n = {
            let g = db.lock().unwrap_or_else(|e| e.into_inner());
            batch(g.conn(), cutoff, batch_size.max(1), seen)
                .map_err(|e| format!("retention: deleting old status bodies: {e}"))?
        };
        if n == 0 {
            break;
        }
        done.bodies += n as u64;
        done.batches += 1;
        // Not "fewer than a batch, so done": a body whose last dependants this batch deleted
        // becomes deletable in the next one.
    }
    if done.bodies > 0 && vacuum_pages > 0 {
        let g = db.lock().unwrap_or_else(|e| e.into_inner());
        let c = g.conn();
        let mode: i64 = c
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap_or(0);
        if mode == 2 {
            let before: i64 = c
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .unwrap_or(0);
            // The pragma frees one page per step: step it to the end.
            let vacuum = || -> rusqlite::Result<()> {
                let mut st = c.prepare(&format!("PRAGMA incremental_vacuum({vacuum_pages})"))?;
                let mut rows = st.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            };
            vacuum().map_err(|e| format!("retention: incremental_vacuum: {e}"))?;
            let after: i64 = c
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .unwrap_or(0);
            done.pages_freed = before - after;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(c: &rusqlite::Connection, vin: &str, name: &str, ts: i64, last_ts: i64) {
        c.execute(
            "INSERT OR IGNORE INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body) VALUES (?1, 1, ?2, ?3, '{}')",
            rusqlite::params![name.as_bytes(), vin, ts],
        )
        .unwrap();
        c.execute(
            "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash)
             VALUES (1, ?1, ?2, ?2, ?3, ?4)",
            rusqlite::params![vin, ts, last_ts, name.as_bytes()],
        )
        .unwrap();
    }

    /// A fresh database with the account `a` (id 1) the rows of these tests belong to.
    fn with_account(dir: &std::path::Path) -> Db {
        let db = Db::open(&dir.join("db.sqlite")).unwrap();
        db.conn()
            .execute(
                "INSERT INTO accounts (name, brand, created_at) VALUES ('a', 'peugeot', '2026-01-01T00:00:00.000Z')",
                [],
            )
            .unwrap();
        db
    }

    fn bodies(c: &rusqlite::Connection) -> Vec<String> {
        let mut st = c
            .prepare("SELECT body_hash FROM status_bodies ORDER BY 1")
            .unwrap();
        st.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|h| String::from_utf8(h.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn old_bodies_go_but_the_newest_recent_and_re_referenced_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let db = with_account(dir.path());
        let c = db.conn();
        // Now is 10,000; the limit keeps what was fetched from 9,000 on.
        add(c, "V1", "v1-old", 100, 100);
        add(c, "V1", "v1-old-refetched", 200, 9_500);
        add(c, "V1", "v1-newest-but-old", 300, 300);
        add(c, "V2", "v2-old", 100, 100);
        add(c, "V2", "v2-recent", 9_800, 9_800);
        let seen = snapshot(c, 9_000).unwrap();
        // After the snapshot the car reports its old body again (A → B → A): it must stay.
        c.execute(
            "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash)
             VALUES (1, 'V2', 100, 9_900, 9_900, ?1)",
            [b"v2-old".as_slice()],
        )
        .unwrap();
        let n = batch(c, 9_000, 1, seen).unwrap() + batch(c, 9_000, 10, seen).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            bodies(c),
            [
                "v1-newest-but-old",
                "v1-old-refetched",
                "v2-old",
                "v2-recent"
            ]
        );
    }

    #[test]
    fn a_base_stays_while_a_body_stored_against_it_stays_and_goes_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Mutex::new(with_account(dir.path())));
        {
            let g = db.lock().unwrap();
            let c = g.conn();
            add(c, "V1", "base", 100, 100);
            add(c, "V1", "delta-old", 200, 200);
            add(c, "V1", "delta-recent", 9_500, 9_500);
            c.execute_batch(
                "UPDATE status_bodies SET base_id = (SELECT body_id FROM status_bodies WHERE body_hash = CAST('base' AS BLOB)),
                        body = x'78bb' WHERE body_hash LIKE 'delta%'",
            )
            .unwrap();
        }
        // The recent delta needs the base: only the old delta goes.
        let p = prune(&db, Duration::from_secs(1_000), 100, 0, 10_000).unwrap();
        assert_eq!(p.bodies, 1);
        assert_eq!(bodies(db.lock().unwrap().conn()), ["base", "delta-recent"]);
        // Later the recent one ages out too, but it is its vehicle's newest observation; once a
        // newer observation (a new base) exists, the delta and then its base go, in one run.
        {
            let g = db.lock().unwrap();
            add(g.conn(), "V1", "new-base", 50_000, 50_000);
        }
        let p = prune(&db, Duration::from_secs(1_000), 100, 0, 60_000).unwrap();
        assert_eq!(p.bodies, 2, "{p:?}");
        assert_eq!(bodies(db.lock().unwrap().conn()), ["new-base"]);
    }

    #[test]
    fn a_chain_of_bodies_stays_while_its_newest_is_kept_and_goes_whole_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Mutex::new(with_account(dir.path())));
        {
            let g = db.lock().unwrap();
            let c = g.conn();
            // base <- c1 <- c2 <- c3: each stored against the one before (src/store/bodies.rs).
            add(c, "V1", "base", 100, 100);
            add(c, "V1", "c1", 200, 200);
            add(c, "V1", "c2", 300, 300);
            add(c, "V1", "c3", 9_500, 9_500);
            c.execute_batch(
                "UPDATE status_bodies SET base_id = body_id - 1, body = x'78bb' WHERE body_hash LIKE 'c%'",
            )
            .unwrap();
        }
        // The recent body needs every body before it.
        let p = prune(&db, Duration::from_secs(1_000), 100, 0, 10_000).unwrap();
        assert_eq!(p.bodies, 0, "{p:?}");
        // Once the chain's newest is old and no longer its vehicle's newest, the chain goes in one
        // run, newest first, whatever the batch size.
        {
            let g = db.lock().unwrap();
            add(g.conn(), "V1", "new-base", 50_000, 50_000);
        }
        let p = prune(&db, Duration::from_secs(1_000), 1, 0, 60_000).unwrap();
        assert_eq!(p.bodies, 4, "{p:?}");
        assert_eq!(bodies(db.lock().unwrap().conn()), ["new-base"]);
    }
}
