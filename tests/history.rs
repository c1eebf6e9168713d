//! The sync engine and the SQLite history, through the real binary: the recorded history equals
//! the simulator's own record of what it changed, failed or partial listings change nothing,
//! readers do not break polls, and older databases migrate.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use common::*;
use serde_json::Value;
use stellantis_sync::sim::{Faults, SimConfig};

type Row = (
    String,
    String,
    String,
    Option<String>,
    Option<Value>,
    Option<Value>,
);

/// Rows of `vehicle_changes` after `after`, as comparable tuples.
fn recorded(env: &Env, after: i64) -> Vec<Row> {
    let c = env.db();
    let mut st = c
        .prepare(
            "SELECT a.name, c.vehicle_id, c.kind, c.field, c.old_value, c.new_value FROM vehicle_changes c
             JOIN accounts a USING (account_id) WHERE c.change_id > ?1",
        )
        .unwrap();
    let mut rows: Vec<Row> = st
        .query_map([after], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                parse_json(r.get(4)?),
                parse_json(r.get(5)?),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        // The simulator logs added/removed without values; the history carries the vehicle's JSON.
        .map(|(a, v, k, f, o, n): Row| {
            if k == "changed" {
                (a, v, k, f, o, n)
            } else {
                (a, v, k, f, None, None)
            }
        })
        .collect();
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

/// The simulator's log from event `from` on, in the same form.
fn expected(env: &Env, from: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = env.sim.events()[from..]
        .iter()
        .map(|e| {
            let name = e.user.split('@').next().unwrap().to_owned();
            (
                name,
                e.vehicle_id.clone(),
                e.kind.to_owned(),
                e.field.clone(),
                e.old.clone(),
                e.new.clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

fn max_change(env: &Env) -> i64 {
    env.count("SELECT coalesce(max(change_id), 0) FROM vehicle_changes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_equals_the_simulators_record_over_many_polls() {
    let cfg = SimConfig {
        users: 5,
        vehicle_counts: vec![3, 2, 4, 1, 0],
        seed: 7,
        ..SimConfig::default()
    };
    let env = Env::new(
        cfg,
        |s| (1..=5).map(|n| Acct::bootstrapped(s, n)).collect(),
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM vehicle_changes WHERE kind = 'added'"),
        10
    );
    let base = max_change(&env);
    let mut ticks_with_changes = 0;
    for _ in 0..30 {
        if env.sim.tick(1) > 0 {
            ticks_with_changes += 1;
        }
        assert_code(&env.once().await, 0);
    }
    let exp = expected(&env, 0);
    assert!(
        exp.len() >= 30,
        "the world changed enough ({} events)",
        exp.len()
    );
    assert!(
        exp.iter().any(|r| r.2 == "removed")
            && exp.iter().any(|r| r.2 == "changed")
            && exp.iter().any(|r| r.2 == "added")
    );
    assert_eq!(
        recorded(&env, base),
        exp,
        "history differs from the simulator's record"
    );
    assert!(ticks_with_changes > 0);
    // The current state equals the simulator's too.
    for n in 1..=5 {
        let mut want: Vec<Value> = env.sim.vehicles(&format!("user{n}@example.com"));
        want.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        let c = env.db();
        let mut st = c
            .prepare("SELECT data FROM vehicle_current WHERE account = ?1 ORDER BY vehicle_id")
            .unwrap();
        let got: Vec<Value> = st
            .query_map([format!("user{n}")], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|t| serde_json::from_str(&t.unwrap()).unwrap())
            .collect();
        assert_eq!(got, want, "user{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_without_changes_writes_no_change_rows() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let changes = max_change(&env);
    let data: String = env
        .db()
        .query_row("SELECT group_concat(data) FROM vehicles", [], |r| r.get(0))
        .unwrap();
    for _ in 0..5 {
        assert_code(&env.once().await, 0);
    }
    assert_eq!(max_change(&env), changes);
    let again: String = env
        .db()
        .query_row("SELECT group_concat(data) FROM vehicles", [], |r| r.get(0))
        .unwrap();
    assert_eq!(data, again);
    assert_eq!(
        env.count("SELECT count(*) FROM sync_runs WHERE status = 'ok' AND changes = 0"),
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_halfway_through_pagination_changes_nothing() {
    let cfg = SimConfig {
        users: 1,
        vehicle_counts: vec![130],
        ..SimConfig::default()
    };
    let env = Env::new(cfg, |s| vec![Acct::bootstrapped(s, 1)], Opts::default()).await;
    assert_code(&env.once().await, 0);
    assert_eq!(env.count("SELECT count(*) FROM vehicle_current"), 130);
    let base = max_change(&env);
    while env.sim.tick(1) == 0 {}
    env.sim.set_faults(Faults {
        fail_from_page: 2,
        ..Faults::default()
    });
    let o = env.once().await;
    assert_code(&o, 75);
    assert_eq!(max_change(&env), base, "a failed listing recorded changes");
    assert_eq!(
        env.count("SELECT count(*) FROM vehicles WHERE removed_at IS NOT NULL"),
        0
    );
    let (status, kind): (String, String) = env
        .db()
        .query_row(
            "SELECT status, error_kind FROM sync_runs ORDER BY run_id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), kind.as_str()), ("failed", "server_error"));
    env.sim.set_faults(Faults::default());
    assert_code(&env.once().await, 0);
    // A listing of several pages records a removal only when the next listing confirms it.
    assert_code(&env.once().await, 0);
    assert_eq!(recorded(&env, base), expected(&env, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_without_embedded_is_incomplete_never_empty() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let base = max_change(&env);
    env.sim.set_faults(Faults {
        no_embedded: 1.0,
        ..Faults::default()
    });
    assert_code(&env.once().await, 75);
    assert_eq!(max_change(&env), base);
    assert_eq!(env.count("SELECT count(*) FROM vehicle_current"), 3);
    assert_eq!(
        env.count("SELECT count(*) FROM sync_runs WHERE error_kind = 'incomplete'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_account_is_a_complete_empty_listing() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 3)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM sync_runs WHERE status = 'ok' AND vehicles_seen = 0"),
        1
    );
    // The 2021 form (40410 "No vehicule found") and body shape are accepted too.
    let legacy = Env::new(
        SimConfig {
            legacy_shapes: true,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 3)],
        Opts::default(),
    )
    .await;
    assert_code(&legacy.once().await, 0);
    assert_eq!(legacy.count("SELECT count(*) FROM vehicle_current"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_changes_while_paged_never_invents_removals() {
    let cfg = SimConfig {
        users: 1,
        vehicle_counts: vec![130],
        ..SimConfig::default()
    };
    let env = Env::new(cfg, |s| vec![Acct::bootstrapped(s, 1)], Opts::default()).await;
    assert_code(&env.once().await, 0);
    let base = max_change(&env);
    env.sim.set_faults(Faults {
        page_shift: 1.0,
        ..Faults::default()
    });
    for _ in 0..5 {
        let o = env.once().await;
        assert!(matches!(o.status.code(), Some(0 | 75)), "{}", text(&o));
        // Every vehicle recorded as removed is really gone from the simulator's list.
        let live: Vec<String> = env
            .sim
            .vehicles("user1@example.com")
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        let c = env.db();
        let mut st = c
            .prepare("SELECT vehicle_id FROM vehicles WHERE removed_at IS NOT NULL")
            .unwrap();
        for id in st.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            assert!(
                !live.contains(&id.unwrap()),
                "a present vehicle was marked removed"
            );
        }
    }
    env.sim.set_faults(Faults::default());
    assert_code(&env.once().await, 0);
    // A listing of several pages records a removal only when the next listing confirms it.
    assert_code(&env.once().await, 0);
    assert_eq!(recorded(&env, base), expected(&env, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_a_long_transaction_does_not_break_polls() {
    let env = Env::new(
        SimConfig {
            users: 3,
            vehicle_counts: vec![4, 4, 4],
            ..SimConfig::default()
        },
        |s| (1..=3).map(|n| Acct::bootstrapped(s, n)).collect(),
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let reader = rusqlite::Connection::open_with_flags(
        env.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader
        .query_row("SELECT count(*) FROM vehicle_changes", [], |r| r.get(0))
        .unwrap();
    for _ in 0..8 {
        env.sim.tick(2);
        assert_code(&env.once().await, 0);
    }
    // The reader still sees its snapshot.
    let during: i64 = reader
        .query_row("SELECT count(*) FROM vehicle_changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, during);
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(
        env.count("SELECT count(*) FROM sync_runs WHERE status != 'ok'"),
        0
    );
    assert_eq!(recorded(&env, before), expected(&env, 0));
}

#[test]
fn an_older_database_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(stellantis_sync::store::MIGRATIONS[0].1)
            .unwrap();
        c.execute_batch("PRAGMA user_version = 1; INSERT INTO accounts (name, brand, created_at) VALUES ('old', 'opel', '2026-01-01T00:00:00.000Z');").unwrap();
    }
    let db = stellantis_sync::store::Db::open(&path).unwrap();
    assert_eq!(
        db.user_version().unwrap(),
        stellantis_sync::store::schema_version()
    );
    let n: i64 = db
        .conn()
        .query_row(
            "SELECT count(*) FROM sync_health WHERE account = 'old'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = stellantis_sync::store::Db::open(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("newer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_database_from_a_newer_version() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    rusqlite::Connection::open(env.db_path())
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let o = env.once().await;
    assert_code(&o, 78);
    assert!(text(&o).contains("newer than this program"), "{}", text(&o));
}

#[test]
fn the_schema_matches_docs_schema_sql() {
    let c = rusqlite::Connection::open_in_memory().unwrap();
    for (_, sql) in stellantis_sync::store::MIGRATIONS {
        c.execute_batch(sql).unwrap();
    }
    let mut st = c
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type DESC, name")
        .unwrap();
    let ddl: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let text = format!(
        "-- Generated from src/store/migrations by tests/history.rs (UPDATE_EXPECT=1 to refresh).\n{};\n",
        ddl.join(";\n\n")
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema.sql");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed, text,
        "docs/schema.sql is stale: run UPDATE_EXPECT=1 cargo test --test history"
    );
}
