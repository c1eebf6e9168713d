//! Distribution and scale-out: the TLS stack (rustls with the platform's root certificates),
//! moving an account between databases (`export-account` / `import-account`), and the fleet
//! analytics over shard databases (DuckDB).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls");

/// An HTTPS server on 127.0.0.1:0 with a leaf certificate for `localhost` signed by the test CA
/// in `tests/data/tls/ca.pem` (a CA no system trusts). Answers every request with `200 ok`.
async fn tls_server() -> u16 {
    let certs = vec![CertificateDer::from_pem_file(format!("{TLS}/leaf.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(format!("{TLS}/leaf.key")).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// The client the daemon uses for HTTPS (`http::client`) builds with the rustls backend and
/// verifies certificates against the platform's roots: with the system store, the test CA is
/// unknown and the request fails on the certificate; when the system store is pointed at the
/// test CA (`SSL_CERT_FILE`, which the platform verifier reads on Linux), the same request
/// succeeds. The second half runs in a child process (this test binary again) so the variable
/// never changes inside this process; `https_trusts_exactly_the_platform_roots` starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_against_a_private_ca() {
    let port = tls_server().await;
    let client = stellantis_sync::http::client(Duration::from_secs(10));
    let result = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await;
    let trusts_test_ca =
        std::env::var("SSL_CERT_FILE").ok().as_deref() == Some(format!("{TLS}/ca.pem").as_str());
    if trusts_test_ca {
        let resp = result.expect("the system roots (SSL_CERT_FILE) include the test CA");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
        println!("PROBE: trusted through the platform roots");
    } else {
        let err = result.expect_err("a certificate from an unknown CA must be refused");
        let chain = error_chain(&err);
        assert!(
            chain.contains("UnknownIssuer") || chain.contains("certificate"),
            "expected a certificate error, got: {chain}"
        );
    }
}

#[test]
fn https_trusts_exactly_the_platform_roots() {
    let empty = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "https_probe_against_a_private_ca", "--nocapture"])
        .env("SSL_CERT_FILE", format!("{TLS}/ca.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("PROBE: trusted through the platform roots"),
        "{out}"
    );
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Moving an account: export-account / import-account

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Acct, BIN, Env, Opts, assert_code, stored_record, text};
use stellantis_sync::sim::SimConfig;

async fn run_with(config: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the binary ran for more than 2 minutes")
        .unwrap()
}

/// Tables with an `account_id` column, found independently of `src/transfer.rs`.
fn account_tables(c: &rusqlite::Connection) -> Vec<String> {
    let mut st = c
        .prepare(
            "SELECT m.name FROM sqlite_schema m WHERE m.type = 'table'
               AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) WHERE name = 'account_id')
             ORDER BY m.name",
        )
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The rowid-alias column of a table (`INTEGER PRIMARY KEY`, not `WITHOUT ROWID`), if any.
fn rowid_alias(c: &rusqlite::Connection, table: &str) -> Option<String> {
    let ddl: String = c
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    if ddl.to_uppercase().contains("WITHOUT ROWID") {
        return None;
    }
    let mut st = c
        .prepare("SELECT name, upper(type) FROM pragma_table_info(?1) WHERE pk > 0")
        .unwrap();
    let pks: Vec<(String, String)> = st
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    match pks.as_slice() {
        [(n, t)] if t == "INTEGER" => Some(n.clone()),
        _ => None,
    }
}

fn columns(c: &rusqlite::Connection, table: &str) -> Vec<String> {
    let mut st = c.prepare("SELECT name FROM pragma_table_info(?1)").unwrap();
    st.query_map([table], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every row of `account`, per table, as text: `account_id` replaced by the name, and every id
/// that a move renumbers (a rowid alias, or a column referencing one) replaced by its rank among
/// the account's rows of that table.
fn dump_account(db: &Path, account: &str) -> BTreeMap<String, Vec<String>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut out = BTreeMap::new();
    for table in account_tables(&c) {
        let own = rowid_alias(&c, &table);
        let mut st = c
            .prepare("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)")
            .unwrap();
        let refs: Vec<(String, String, String)> = st
            .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let exprs: Vec<String> = columns(&c, &table)
            .iter()
            .map(|col| {
                if col == "account_id" {
                    "(SELECT name FROM accounts a WHERE a.account_id = t.account_id)".to_owned()
                } else if table != "accounts" && own.as_deref() == Some(col.as_str()) {
                    format!(
                        "(SELECT count(*) FROM \"{table}\" x WHERE x.account_id = t.account_id AND x.\"{col}\" <= t.\"{col}\")"
                    )
                } else if let Some((_, p, to)) = refs
                    .iter()
                    .find(|(f, p, _)| f == col && p != "accounts" && rowid_alias(&c, p).is_some())
                {
                    format!(
                        "(SELECT count(*) FROM \"{p}\" x WHERE x.account_id = t.account_id AND x.\"{to}\" <= t.\"{col}\")"
                    )
                } else {
                    format!("t.\"{col}\"")
                }
            })
            .map(|e| format!("quote({e})"))
            .collect();
        let q = format!(
            "SELECT {} FROM \"{table}\" t WHERE t.account_id = (SELECT account_id FROM accounts WHERE name = ?1)",
            exprs.join(" || '|' || ")
        );
        let mut st = c.prepare(&q).unwrap();
        let mut rows: Vec<String> = st
            .query_map([account], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

/// Every row of every other account, raw (ids included: they must not change).
fn dump_others(db: &Path, account: &str) -> BTreeMap<String, Vec<String>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut out = BTreeMap::new();
    for table in account_tables(&c) {
        let exprs: Vec<String> = columns(&c, &table)
            .iter()
            .map(|col| format!("quote(t.\"{col}\")"))
            .collect();
        let q = format!(
            "SELECT {} FROM \"{table}\" t WHERE t.account_id IS NOT (SELECT account_id FROM accounts WHERE name = ?1)",
            exprs.join(" || '|' || ")
        );
        let mut st = c.prepare(&q).unwrap();
        let mut rows: Vec<String> = st
            .query_map([account], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(table, rows);
    }
    out
}

/// Rows for an account in every table the sync passes leave empty for it (telemetry, absences).
fn add_telemetry(db: &Path, account: &str, vin: &str, seed: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    let id: i64 = c
        .query_row(
            "SELECT account_id FROM accounts WHERE name = ?1",
            [account],
            |r| r.get(0),
        )
        .unwrap();
    let hash = format!("{account}-{seed}").into_bytes();
    let t = 1_700_000_000 + seed * 1000;
    let stmts: &[(&str, &str)] = &[
        (
            "vehicle_absences",
            "INSERT INTO vehicle_absences (account_id, vehicle_id, since, run_id)
             VALUES (?1, 'gone-' || ?2, strftime('%Y-%m-%dT%H:%M:%fZ', ?4, 'unixepoch'),
                     (SELECT max(run_id) FROM sync_runs WHERE account_id = ?1))",
        ),
        (
            "status_bodies",
            "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body) VALUES (?3, ?1, ?2, ?4, '{\"energy\":[{\"level\":80}]}')",
        ),
        (
            // A body stored against that base (migration 0006): the reference must follow it.
            "status_bodies",
            "INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, base_id, body)
             VALUES (?3 || x'01', ?1, ?2, ?4 + 1,
                     (SELECT body_id FROM status_bodies WHERE account_id = ?1 AND body_hash = ?3), x'78bb')",
        ),
        (
            "vehicle_status",
            "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, soc, range_km, latitude, longitude, body_hash)
             VALUES (?1, ?2, ?4, ?4, ?4 + 600, 80.5, 310, 48.85, 2.35, ?3), (?1, ?2, ?4 + 900, ?4 + 900, ?4 + 900, 79.0, 305, NULL, NULL, ?3)",
        ),
        (
            "vehicle_states",
            "INSERT INTO vehicle_states (account_id, vin, state, started_ts, ended_ts) VALUES (?1, ?2, 'parked', ?4, ?4 + 500), (?1, ?2, 'charging', ?4 + 500, NULL)",
        ),
        (
            "charging_sessions",
            "INSERT INTO charging_sessions (account_id, vin, started_ts, ended_ts, start_soc, end_soc, energy_added_kwh) VALUES (?1, ?2, ?4, ?4 + 3600, 20.0, 80.0, 30.25)",
        ),
        (
            "trips",
            "INSERT INTO trips (account_id, vin, trip_id, started_ts, ended_ts, distance_km, done, data) VALUES (?1, ?2, 'trip-1', ?4, ?4 + 1200, 12.5, 1, '{\"id\":\"trip-1\"}')",
        ),
        (
            "vehicle_alerts",
            "INSERT INTO vehicle_alerts (account_id, vin, alert_id, type, severity, active, started_ts) VALUES (?1, ?2, 'alert-1', 'lowBattery', 'medium', 1, ?4)",
        ),
        (
            "maintenance",
            "INSERT INTO maintenance (account_id, vin, observed_ts, days_before, km_before) VALUES (?1, ?2, ?4, 120, 9000.0)",
        ),
        (
            "telemetry_endpoints",
            "INSERT INTO telemetry_endpoints (account_id, vin, endpoint, last_success_ts, bookmark) VALUES (?1, ?2, 'trips', ?4, 'trip-1')",
        ),
    ];
    for (table, sql) in stmts {
        let n: i64 = c
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE account_id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap();
        if n == 0 {
            c.execute(sql, rusqlite::params![id, vin, hash, t]).unwrap();
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A second instance (its own directory, state and database) against the same simulator.
fn second_instance(env: &Env, accounts: &[Acct]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        common::config_text(&env.sim, dir.path(), accounts, &Opts::default()),
    )
    .unwrap();
    (dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_moves_between_databases_and_back_without_losing_a_row() {
    let a = Env::new(
        SimConfig {
            users: 4,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    let (bdir, bcfg) = second_instance(&a, &[Acct::bootstrapped(&a.sim, 4)]);
    let bdb = bdir.path().join("state/stellantis-sync.sqlite");
    let bstate = bdir.path().join("state");
    // Real history from a few passes while the simulated world changes; B first, so its ids
    // overlap A's and the move has to renumber.
    for _ in 0..3 {
        assert_code(&run_with(&bcfg, &["--once"]).await, 0);
    }
    for _ in 0..3 {
        assert_code(&a.once().await, 0);
        a.sim.tick(3);
    }
    for (db, acct, seed) in [
        (a.db_path(), "user1", 1),
        (a.db_path(), "user2", 2),
        (bdb.clone(), "user4", 4),
    ] {
        add_telemetry(&db, acct, &format!("VIN{seed}"), seed);
    }
    let orig = dump_account(&a.db_path(), "user1");
    for (table, rows) in &orig {
        assert!(
            !rows.is_empty(),
            "no {table} rows for user1 to move: {orig:#?}"
        );
    }
    assert!(orig["vehicle_changes"].len() >= 2, "{orig:#?}");
    let a_others = dump_others(&a.db_path(), "user1");
    let token_before = stored_record(&a.state_dir(), "user1");
    let work = tempfile::tempdir().unwrap();
    let f1 = work.path().join("user1.sqlite");
    let f1s = f1.to_str().unwrap();

    // --with-tokens moves the token, so it needs --remove.
    let o = a
        .run(
            &["export-account", "user1", "--to", f1s, "--with-tokens"],
            &[],
        )
        .await;
    assert_code(&o, 65);
    assert!(text(&o).contains("needs --remove"), "{}", text(&o));
    assert!(!f1.exists());

    // A -> file: the file is a database of this schema holding only user1 (and its token).
    let o = a
        .run(
            &[
                "export-account",
                "user1",
                "--to",
                f1s,
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await;
    assert_code(&o, 0);
    assert_eq!(mode(&f1), 0o600);
    assert_eq!(dump_account(&f1, "user1"), orig);
    {
        let c = rusqlite::Connection::open(&f1).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, stellantis_sync::store::schema_version());
        let names: i64 = c
            .query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(names, 1);
    }
    assert!(!work.path().join("user1.sqlite-wal").exists());
    assert!(!a.state_dir().join("tokens/user1.json").exists());
    assert_eq!(dump_others(&a.db_path(), "user1"), a_others);
    let gone = dump_account(&a.db_path(), "user1");
    assert!(gone.values().all(Vec::is_empty), "{gone:#?}");
    // Nothing left to export; an existing file is never overwritten.
    assert_code(
        &a.run(
            &["export-account", "user1", "--to", "/tmp/nope.sqlite"],
            &[],
        )
        .await,
        65,
    );
    assert_code(
        &a.run(&["export-account", "user2", "--to", f1s], &[]).await,
        65,
    );

    // A running daemon on B holds its state directory: import refuses.
    let mut daemon = {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("--config")
            .arg(&bcfg)
            .arg("run")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    // The daemon holds its instance lock once its start-up pass has written a run; then import.
    let b_runs = || -> i64 {
        rusqlite::Connection::open(&bdb)
            .unwrap()
            .query_row("SELECT count(*) FROM sync_runs", [], |r| r.get(0))
            .unwrap()
    };
    let runs_before = b_runs();
    common::wait_for(30, "the daemon's start-up pass", || b_runs() > runs_before).await;
    let refused = run_with(&bcfg, &["import-account", f1s, "--with-tokens"]).await;
    assert_code(&refused, 75);
    assert!(
        text(&refused).contains("in use by a running"),
        "{}",
        text(&refused)
    );
    common::signal(&daemon, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await;
    let _ = daemon.kill().await;

    // An instance serving another shard refuses the account (user1 is shard 0 of 2).
    assert_eq!(stellantis_sync::shard::shard_of("user1", 2), 0);
    let o = run_with(&bcfg, &["--shard", "1/2", "import-account", f1s]).await;
    assert_code(&o, 65);
    assert!(text(&o).contains("belongs to shard 0/2"), "{}", text(&o));

    // One byte of a stored status body changed after export: SQLite's checks cannot see it;
    // the export's checksum refuses the file, and B is unchanged.
    {
        let edit = "UPDATE status_bodies SET body = replace(body, '80', '81')
         WHERE body_id = (SELECT min(body_id) FROM status_bodies WHERE base_id IS NULL)";
        let doctored = work.path().join("doctored.sqlite");
        std::fs::copy(&f1, &doctored).unwrap();
        let n = rusqlite::Connection::open(&doctored)
            .unwrap()
            .execute(edit, [])
            .unwrap();
        assert_eq!(n, 1, "{edit}");
        let o = run_with(&bcfg, &["import-account", doctored.to_str().unwrap()]).await;
        assert_code(&o, 65);
        assert!(
            text(&o).contains("table status_bodies does not match the checksum written at export"),
            "{}",
            text(&o)
        );
        assert!(dump_account(&bdb, "user1").values().all(Vec::is_empty));
    }

    // file -> B.
    let b_others = dump_others(&bdb, "user1");
    let o = run_with(&bcfg, &["import-account", f1s, "--with-tokens"]).await;
    assert_code(&o, 0);
    assert_eq!(dump_account(&bdb, "user1"), orig);
    assert_eq!(dump_others(&bdb, "user1"), b_others);
    assert_eq!(stored_record(&bstate, "user1"), token_before);
    assert_eq!(mode(&bstate.join("tokens/user1.json")), 0o600);
    // The file is spent: its token erased, a second import refused (it would also duplicate
    // every row).
    assert!(text(&o).contains("is spent"), "{}", text(&o));
    let rt = token_before["refresh_token"].as_str().unwrap();
    assert!(
        !std::fs::read(&f1)
            .unwrap()
            .windows(rt.len())
            .any(|w| w == rt.as_bytes()),
        "the imported file still holds the refresh token"
    );
    let o = run_with(&bcfg, &["import-account", f1s]).await;
    assert_code(&o, 65);
    assert!(text(&o).contains("already imported"), "{}", text(&o));
    assert_eq!(dump_account(&bdb, "user1"), orig);

    // B -> file -> A.
    let f2 = work.path().join("back.sqlite");
    let f2s = f2.to_str().unwrap();
    assert_code(
        &run_with(
            &bcfg,
            &[
                "export-account",
                "user1",
                "--to",
                f2s,
                "--with-tokens",
                "--remove",
            ],
        )
        .await,
        0,
    );
    assert_eq!(dump_others(&bdb, "user1"), b_others);
    assert!(dump_account(&bdb, "user1").values().all(Vec::is_empty));
    let o = a.run(&["import-account", f2s, "--with-tokens"], &[]).await;
    assert_code(&o, 0);
    assert_eq!(dump_account(&a.db_path(), "user1"), orig);
    assert_eq!(dump_others(&a.db_path(), "user1"), a_others);
    assert_eq!(stored_record(&a.state_dir(), "user1"), token_before);

    // The moved token still works: the next pass syncs user1 and extends its history.
    let runs = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sync_runs JOIN accounts USING (account_id) WHERE name = 'user1' AND status = 'ok'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let before = runs(&a.db_path());
    assert_code(&a.once().await, 0);
    assert_eq!(runs(&a.db_path()), before + 1);

    // Without --with-tokens nothing secret is exported.
    let f3 = work.path().join("user2.sqlite");
    assert_code(
        &a.run(
            &["export-account", "user2", "--to", f3.to_str().unwrap()],
            &[],
        )
        .await,
        0,
    );
    let c = rusqlite::Connection::open(&f3).unwrap();
    let tables: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'transfer_token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    let rt = common::stored_refresh_token(&a.state_dir(), "user2").unwrap();
    let bytes = std::fs::read(&f3).unwrap();
    assert!(
        !bytes.windows(rt.len()).any(|w| w == rt.as_bytes()),
        "a refresh token in an export without --with-tokens"
    );
}

// ---------------------------------------------------------------------------------------------
// Fleet analytics: DuckDB views over every shard's database (tools/fleet.py, docs/fleet.md)

fn fleet_query(dbs: &[PathBuf], query: &str) -> Vec<serde_json::Value> {
    let o = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/fleet.py"))
        .args(["--json", "--query", query])
        .args(dbs)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fleet.py failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_views_are_the_union_of_three_shards() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import duckdb, duckdb_extension_sqlite"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 cannot import duckdb and duckdb_extension_sqlite: \
         pip install duckdb==1.5.5 duckdb-extension-sqlite==1.5.5 \
         (.ci/run installs them into target/ci-venv and puts it first on PATH): {probe:?}"
    );
    let env = Env::new(
        SimConfig {
            users: 9,
            ..SimConfig::default()
        },
        |s| (1..=9).map(|n| Acct::bootstrapped(s, n)).collect(),
        Opts::default(),
    )
    .await;
    // Three instances of one configuration, as the systemd template runs them: --shard I/3 and
    // the state directory and database moved by environment variables.
    let mut dbs = Vec::new();
    for i in 0..3 {
        let state = env.dir.path().join(format!("fleet/{i}"));
        let db = state.join("stellantis-sync.sqlite");
        let o = env
            .run(
                &["--shard", &format!("{i}/3"), "--once"],
                &[
                    ("STELLANTIS_SYNC_STATE_DIR", state.to_str().unwrap()),
                    ("STELLANTIS_SYNC_DATABASE", db.to_str().unwrap()),
                ],
            )
            .await;
        assert_code(&o, 0);
        dbs.push(db);
    }
    // What each shard's file holds, read directly.
    let mut accounts = Vec::new();
    let mut vehicles = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let c = rusqlite::Connection::open(db).unwrap();
        let mut st = c.prepare("SELECT name FROM accounts").unwrap();
        let names: Vec<String> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!names.is_empty(), "shard {i} has no account");
        for n in names {
            assert_eq!(stellantis_sync::shard::shard_of(&n, 3), i as u32, "{n}");
            accounts.push(serde_json::json!([i, n]));
        }
        let mut st = c
            .prepare("SELECT a.name, v.vehicle_id, v.vin FROM vehicles v JOIN accounts a USING (account_id)")
            .unwrap();
        for row in st
            .query_map([], |r| {
                Ok(serde_json::json!([
                    i,
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?
                ]))
            })
            .unwrap()
        {
            vehicles.push(row.unwrap());
        }
    }
    accounts.sort_by_key(|v| v.to_string());
    vehicles.sort_by_key(|v| v.to_string());
    assert_eq!(accounts.len(), 9);
    let expected_vehicles: usize = env
        .sim
        .users()
        .iter()
        .map(|(email, _, _)| env.sim.vehicles(email).len())
        .sum();
    assert_eq!(vehicles.len(), expected_vehicles);
    assert!(expected_vehicles >= 5);

    let mut got = fleet_query(&dbs, "SELECT shard, name FROM accounts");
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, accounts);
    let mut got = fleet_query(
        &dbs,
        "SELECT v.shard, a.name, v.vehicle_id, v.vin FROM vehicles v JOIN accounts a USING (shard, account_id)",
    );
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vehicles);
    // The SQLite views are unioned too (DuckDB reads their columns as text).
    let current = fleet_query(&dbs, "SELECT count(*) FROM vehicle_current");
    assert_eq!(current, vec![serde_json::json!([expected_vehicles])]);
    let runs = fleet_query(
        &dbs,
        "SELECT count(DISTINCT shard), count(*) FROM sync_runs WHERE status = 'ok'",
    );
    assert_eq!(runs, vec![serde_json::json!([3, 9])]);
}

/// The adversarial pass's findings on moving accounts: an export file's account name and token
/// record are not trusted, a failed rename leaves no temporary copy of a token, and a removal that
/// fails after the token left puts everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_fails_or_a_doctored_file_never_loses_or_misplaces_a_token() {
    let a = Env::new(
        SimConfig {
            users: 3,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&a.once().await, 0);
    let token1 = std::fs::read(a.state_dir().join("tokens/user1.json")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let leftovers = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    };

    // A destination that cannot be renamed onto ("Not a directory"): exit 74, no temporary file
    // (it held the token record), the token and the history still here.
    std::fs::write(work.path().join("plain"), b"").unwrap();
    let bad = work.path().join("plain/");
    let o = a
        .run(
            &[
                "export-account",
                "user1",
                "--to",
                bad.to_str().unwrap(),
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await;
    assert_code(&o, 74);
    assert_eq!(leftovers(work.path()), Vec::<String>::new());
    assert_eq!(
        std::fs::read(a.state_dir().join("tokens/user1.json")).unwrap(),
        token1
    );

    // The history cannot be removed after the token left: the token comes back, the export
    // file goes, exit 75 (try again), the history is untouched.
    let before = dump_account(&a.db_path(), "user1");
    let f = work.path().join("user1.sqlite");
    let o = a
        .run(
            &[
                "export-account",
                "user1",
                "--to",
                f.to_str().unwrap(),
                "--with-tokens",
                "--remove",
            ],
            &[("STELLANTIS_FAIL_AT", "transfer_remove")],
        )
        .await;
    assert_code(&o, 75);
    assert!(text(&o).contains("nothing was changed"), "{}", text(&o));
    assert!(
        !f.exists(),
        "the export file stayed: the account would live in two places"
    );
    assert_eq!(
        std::fs::read(a.state_dir().join("tokens/user1.json")).unwrap(),
        token1
    );
    assert_eq!(dump_account(&a.db_path(), "user1"), before);

    // A file whose account name is a path: refused before anything is written.
    let (bdir, bcfg) = second_instance(&a, &[Acct::bootstrapped(&a.sim, 3)]);
    let g = work.path().join("user2.sqlite");
    assert_code(
        &a.run(
            &[
                "export-account",
                "user2",
                "--to",
                g.to_str().unwrap(),
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await,
        0,
    );
    let doctored = work.path().join("doctored.sqlite");
    std::fs::copy(&g, &doctored).unwrap();
    {
        let c = rusqlite::Connection::open(&doctored).unwrap();
        c.execute("UPDATE accounts SET name = '../../escaped'", [])
            .unwrap();
        c.execute("UPDATE transfer_token SET account = '../../escaped'", [])
            .unwrap();
    }
    let o = run_with(
        &bcfg,
        &[
            "import-account",
            doctored.to_str().unwrap(),
            "--with-tokens",
        ],
    )
    .await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("not a valid account name"),
        "{}",
        text(&o)
    );
    assert!(!bdir.path().join("escaped.json").exists());
    assert!(!bdir.path().join("state/escaped.json").exists());

    // A file renamed to another account whose token record still names the first: refused (the
    // store would have saved it over the first account's live token).
    std::fs::copy(&g, &doctored).unwrap();
    {
        let c = rusqlite::Connection::open(&doctored).unwrap();
        c.execute("UPDATE accounts SET name = 'user3'", []).unwrap();
        c.execute("UPDATE transfer_token SET account = 'user3'", [])
            .unwrap();
    }
    let token3 = std::fs::read(bdir.path().join("state/tokens/user3.json")).ok();
    let o = run_with(
        &bcfg,
        &[
            "import-account",
            doctored.to_str().unwrap(),
            "--with-tokens",
        ],
    )
    .await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("not to the exported account"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(bdir.path().join("state/tokens/user3.json")).ok(),
        token3
    );
    assert!(!bdir.path().join("state/tokens/user2.json").exists());
    // A file with another account's rows, a newer schema, or a damaged page: refused, naming
    // the file and what is wrong with it (not the healthy target).
    std::fs::copy(&g, &doctored).unwrap();
    {
        let c = rusqlite::Connection::open(&doctored).unwrap();
        c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        c.execute(
            "INSERT INTO vehicle_status (account_id, vin, observed_ts, first_fetched_ts, last_fetched_ts, body_hash)
             VALUES (999, 'X', 1, 1, 1, x'00')",
            [],
        )
        .unwrap();
    }
    let o = run_with(&bcfg, &["import-account", doctored.to_str().unwrap()]).await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("1 rows in vehicle_status of an account that is not"),
        "{}",
        text(&o)
    );
    std::fs::copy(&g, &doctored).unwrap();
    rusqlite::Connection::open(&doctored)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let o = run_with(&bcfg, &["import-account", doctored.to_str().unwrap()]).await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("written by a newer version"),
        "{}",
        text(&o)
    );
    std::fs::copy(&g, &doctored).unwrap();
    {
        let mut bytes = std::fs::read(&doctored).unwrap();
        let page = 4096;
        assert!(bytes.len() > 4 * page);
        for b in &mut bytes[2 * page..3 * page] {
            *b = 0xff;
        }
        std::fs::write(&doctored, bytes).unwrap();
    }
    let o = run_with(&bcfg, &["import-account", doctored.to_str().unwrap()]).await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("doctored.sqlite is damaged"),
        "{}",
        text(&o)
    );
    // Content changed after export, which SQLite's own checks cannot see: a vehicle's JSON, or
    // one value of a run. The export's checksum refuses both.
    for edit in [
        "UPDATE vehicles SET data = json_set(data, '$.label', 'edited')
         WHERE rowid = (SELECT min(rowid) FROM vehicles)",
        "UPDATE sync_runs SET finished_at = finished_at || ' '
         WHERE run_id = (SELECT max(run_id) FROM sync_runs)",
    ] {
        std::fs::copy(&g, &doctored).unwrap();
        let n = rusqlite::Connection::open(&doctored)
            .unwrap()
            .execute(edit, [])
            .unwrap();
        assert_eq!(n, 1, "{edit}");
        let o = run_with(&bcfg, &["import-account", doctored.to_str().unwrap()]).await;
        assert_code(&o, 65);
        assert!(
            text(&o).contains("doctored.sqlite is damaged")
                && text(&o).contains("does not match the checksum written at export"),
            "{}",
            text(&o)
        );
    }
    // A token record that does not parse, a table gone, no file at all: refused (65), never
    // the "could not write" of 74.
    for (edit, says) in [
        (
            "UPDATE transfer_token SET record = '{' || record",
            "its token record cannot be read",
        ),
        ("DROP TABLE trips", "table trips is missing"),
    ] {
        std::fs::copy(&g, &doctored).unwrap();
        rusqlite::Connection::open(&doctored)
            .unwrap()
            .execute_batch(edit)
            .unwrap();
        let o = run_with(
            &bcfg,
            &[
                "import-account",
                doctored.to_str().unwrap(),
                "--with-tokens",
            ],
        )
        .await;
        assert_code(&o, 65);
        assert!(text(&o).contains(says), "{edit}: {}", text(&o));
    }
    let nowhere = work.path().join("nowhere.sqlite");
    let o = run_with(&bcfg, &["import-account", nowhere.to_str().unwrap()]).await;
    assert_code(&o, 65);
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    // The genuine file still moves, its checksum verified (no warning).
    let o = run_with(
        &bcfg,
        &["import-account", g.to_str().unwrap(), "--with-tokens"],
    )
    .await;
    assert_code(&o, 0);
    assert!(!text(&o).contains("no content checksum"), "{}", text(&o));
    // Moving an account whose token record is gone: refused (65), nothing exported.
    std::fs::remove_file(a.state_dir().join("tokens/user1.json")).unwrap();
    let h = work.path().join("user1-no-token.sqlite");
    let o = a
        .run(
            &[
                "export-account",
                "user1",
                "--to",
                h.to_str().unwrap(),
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await;
    assert_code(&o, 65);
    assert!(text(&o).contains("has no token record"), "{}", text(&o));
    assert!(!h.exists());
    assert!(bdir.path().join("state/tokens/user2.json").exists());
}
