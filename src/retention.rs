//! Retention: how long raw telemetry bodies (`status_bodies`) are kept. Off unless
//! `[retention] status_bodies_max_age` is set; derived tables (`vehicle_status`, sessions, trips,
//! …) are never pruned.
//!
//! After a pass, bodies first fetched before the limit are deleted in small batches, one short
//! write transaction each, so the daemon's own writes interleave. A body still referenced by the
//! newest `vehicle_status` row of its vehicle, or by any row fetched within the limit, is never
//! deleted (the newest observation stays explainable). Freed pages go back to the file system
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

const DELETE_BATCH: &str = "DELETE FROM status_bodies WHERE body_hash IN (
    SELECT b.body_hash FROM status_bodies b
    WHERE b.first_fetched_ts < ?1
      AND b.body_hash NOT IN (
        SELECT s.body_hash FROM vehicle_status s
        WHERE s.last_fetched_ts >= ?1
           OR s.observed_ts = (SELECT max(s2.observed_ts) FROM vehicle_status s2
                               WHERE s2.account_id = s.account_id AND s2.vin = s.vin))
    LIMIT ?2)";

/// One batch in its own `BEGIN IMMEDIATE` transaction; returns the rows deleted.
fn batch(conn: &rusqlite::Connection, cutoff: i64, size: u32) -> rusqlite::Result<usize> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(DELETE_BATCH, rusqlite::params![cutoff, size])?;
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
    loop {
        let n = {
            let g = db.lock().unwrap_or_else(|e| e.into_inner());
            match batch(g.conn(), cutoff, batch_size.max(1)) {
                Ok(n) => n,
                // A database without the telemetry tables has nothing to prune.
                Err(e) if e.to_string().contains("no such table") => return Ok(done),
                Err(e) => return Err(format!("retention: deleting old status bodies: {e}")),
            }
        };
        if n == 0 {
            break;
        }
        done.bodies += n as u64;
        done.batches += 1;
        if n < batch_size as usize {
            break;
        }
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
