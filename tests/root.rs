//! The tests that need root: they mount a small tmpfs to fill a disk, or run readers as another
//! user. Built only with `--features root-tests` (CI runs them as root: `.ci/run`), so that a
//! newcomer's `cargo test` passes without privileges; run them with
//! `sudo -E cargo test --features root-tests --test root`. Each one fails loudly, never skips,
//! when what it needs is missing.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stellantis_sync::sim::SimConfig;

fn mount(args: &[&str]) -> bool {
    std::process::Command::new("mount")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(p: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(p).status();
}

/// T7: a full disk and a read-only state directory give a clear error (exit 74), never a corrupt
/// database or a lost refresh token; once space is back, the next run succeeds without a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_and_read_only_state() {
    let cfg = SimConfig {
        users: 3,
        access_ttl: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let env = Env::new(
        cfg,
        |s| (1..=3).map(|n| Acct::bootstrapped(s, n)).collect(),
        Opts::default(),
    )
    .await;
    let state = env.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    if !mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=2m",
        "tmpfs",
        state.to_str().unwrap(),
    ]) {
        panic!("this test needs root to mount a tmpfs (CI runs as root)");
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            umount(&self.0);
        }
    }
    let _guard = Unmount(state.clone());
    assert_code(&env.once().await, 0);
    let before = stored_refresh_token(&state, "user1").unwrap();
    // Fill the disk.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    use std::io::Write;
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    drop(f);
    env.sim.tick(2);
    let o = env.once().await;
    assert_code(&o, 74);
    let out = text(&o);
    assert!(out.contains("full") || out.contains("No space"), "{out}");
    assert!(
        env.sim
            .refresh_token_is_live(&stored_refresh_token(&state, "user1").unwrap()),
        "the stored token must stay live"
    );
    assert_eq!(
        stored_refresh_token(&state, "user1").unwrap(),
        before,
        "no refresh token was spent without room to store its successor"
    );
    std::fs::remove_file(&filler).unwrap();
    assert_code(&env.once().await, 0);
    let ok: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(env.sim.stats().grants.get("password"), None);
    // Read-only state directory.
    assert!(mount(&["-o", "remount,ro", state.to_str().unwrap()]));
    let o = env.once().await;
    assert_code(&o, 74);
    assert!(text(&o).contains("Read-only"), "{}", text(&o));
    assert!(mount(&["-o", "remount,rw", state.to_str().unwrap()]));
    assert_code(&env.once().await, 0);
    eprintln!(
        "disk full: exit 74, token not spent, database ok; read-only: exit 74; both recovered with 0 logins"
    );
}

/// Mounts a tmpfs of `size` on the environment's state directory; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn on(env: &Env, size: &str) -> Tmpfs {
        let state = env.state_dir();
        std::fs::create_dir_all(&state).unwrap();
        assert!(
            mount(&[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                state.to_str().unwrap()
            ]),
            "this test needs root to mount a tmpfs (CI runs as root)"
        );
        Tmpfs(state)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(&self.0);
    }
}

/// Fills the file system holding `dir` (a file `filler` in it) and removes the token store's
/// reserve, so the next token save fails for lack of space.
fn fill(dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join("tokens/.ballast"));
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    use std::io::Write;
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
}

/// Issue 10 item 1: a rotated token whose save failed (disk full) is kept in memory — across a
/// reload (SIGHUP), and written at the next pass once space is back; or written at shutdown.
/// Before the fix a reload forgot it and a stop only logged "lost at exit".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_kept_in_memory_survives_a_reload_and_a_stop() {
    for stop in [false, true] {
        let env = Env::new(
            SimConfig::default(),
            |s| vec![Acct::bootstrapped(s, 1)],
            Opts::default(),
        )
        .await;
        let _fs = Tmpfs::on(&env, "4m");
        let arrived = Arc::new(tokio::sync::Notify::new());
        let idp = forwarding_idp(
            env.sim.base_url(),
            Duration::from_millis(1500),
            arrived.clone(),
            |_, body| body,
        )
        .await;
        point_section_at(&env.config, "idp", &idp.base);
        let child = env.spawn_daemon(&[]);
        tokio::time::timeout(Duration::from_secs(20), arrived.notified())
            .await
            .expect("the first token exchange");
        fill(&env.state_dir());
        // The answer arrives, the save fails: the token now lives only in the daemon's memory.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            stored_refresh_token(&env.state_dir(), "user1")
                .is_none_or(|t| !env.sim.refresh_token_is_live(&t)),
            "the save should have failed on the full disk"
        );
        if !stop {
            signal(&child, "HUP");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::fs::remove_file(env.state_dir().join("filler")).unwrap();
        if stop {
            signal(&child, "TERM");
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
        } else {
            wait_for(20, "the pending token written by a pass", || {
                stored_refresh_token(&env.state_dir(), "user1")
                    .is_some_and(|t| env.sim.refresh_token_is_live(&t))
            })
            .await;
            signal(&child, "TERM");
            let _ = child.wait_with_output().await;
        }
        let stored = stored_refresh_token(&env.state_dir(), "user1").expect("a stored token");
        assert!(
            env.sim.refresh_token_is_live(&stored),
            "stop={stop}: the rotated token was lost"
        );
        point_section_at(&env.config, "idp", &env.sim.base_url());
        assert_code(&env.once().await, 0);
        assert_eq!(env.sim.stats().reused_refresh, 0);
    }
}

/// Where `.ci/run` installs the readers' tools (Debian's Python, so another user can run it):
/// `python3 -m venv /opt/stellantis-sync-readers && /opt/stellantis-sync-readers/bin/pip install
/// duckdb==1.5.5 duckdb-extension-sqlite==1.5.5 datasette==0.65.5`.
const READERS: &str = "/opt/stellantis-sync-readers/bin";

/// Runs `cmd` as uid/gid 12345 (a reader in the database's group) and returns its output.
fn as_reader(cmd: &[&str]) -> std::process::Output {
    assert!(
        std::path::Path::new(READERS).join("datasette").exists(),
        "the readers' tools are missing: see READERS in tests/root.rs (.ci/run installs them)"
    );
    std::process::Command::new("setpriv")
        .args(["--reuid=12345", "--regid=12345", "--clear-groups"])
        .args(cmd)
        .env("HOME", "/tmp")
        .env("PATH", format!("{READERS}:/usr/bin:/bin"))
        .output()
        .expect("setpriv (util-linux) is needed")
}

/// Opens the database read-only with each tool the README promises, as another user of the group.
fn read_with_every_tool(db: &std::path::Path) {
    let db = db.to_str().unwrap();
    let out = as_reader(&["sqlite3", "-readonly", db, "SELECT count(*) FROM sync_runs"]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3 -readonly: {}",
        text(&out)
    );
    let py = format!(
        "import sqlite3; c = sqlite3.connect('file:{db}?mode=ro', uri=True); print(c.execute('SELECT count(*) FROM sync_runs').fetchone()[0])"
    );
    let out = as_reader(&["python3", "-c", &py]);
    assert!(out.status.success(), "python mode=ro: {}", text(&out));
    // The package ships the extension as `sqlite.duckdb_extension`; DuckDB derives the entry
    // point from the file name, so it is loaded through a link named after the extension.
    let duck = format!(
        "import duckdb, glob, os, tempfile, duckdb_extension_sqlite as e\n\
         ext = glob.glob(os.path.join(os.path.dirname(e.__file__), 'extensions', '*', 'sqlite.duckdb_extension'))[0]\n\
         link = os.path.join(tempfile.mkdtemp(), 'sqlite_scanner.duckdb_extension')\n\
         os.symlink(ext, link)\n\
         con = duckdb.connect()\n\
         con.execute(f\"LOAD '{{link}}'\")\n\
         con.execute(\"ATTACH '{db}' AS s (TYPE sqlite, READ_ONLY)\")\n\
         print(con.execute('SELECT count(*) FROM s.sync_runs').fetchone()[0])"
    );
    let out = as_reader(&["python3", "-c", &duck]);
    assert!(
        out.status.success(),
        "DuckDB READ_ONLY (pip install duckdb==1.5.5 duckdb-extension-sqlite==1.5.5): {}",
        text(&out)
    );
    let stem = std::path::Path::new(db)
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap();
    let out = as_reader(&[
        "datasette",
        db,
        "--get",
        &format!("/{stem}/sync_runs.json?_shape=array"),
    ]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with('['),
        "datasette (pip install datasette==0.65.5): {}",
        text(&out)
    );
}

/// Issue 10 item 21: a reader of another UID in the group opens the database read-only with
/// sqlite3, Python, DuckDB and Datasette while the daemon runs AND while it is stopped (the
/// normal state between `--once` runs). Before the fix SQLite deleted `-wal` and `-shm` at close,
/// and a reader who cannot create files in the 0750 directory failed with "attempt to write a
/// readonly database".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_readers_open_the_database_while_the_daemon_runs_and_after_it_stopped() {
    let env = Env::new(
        SimConfig::default(),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    let mut child = env.spawn_daemon(&[]);
    wait_for(20, "a pass", || {
        env.try_count("SELECT count(*) FROM sync_runs WHERE status = 'ok'")
            .is_some_and(|n| n >= 2)
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chgrp = std::process::Command::new("chgrp")
        .args(["12345", env.state_dir().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chgrp.success());
    assert_eq!(
        std::fs::metadata(env.state_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750,
        "the state directory is 0750: group readers cannot create files in it"
    );
    read_with_every_tool(&env.db_path());
    signal(&child, "TERM");
    assert!(child.wait().await.unwrap().success());
    for suffix in ["-wal", "-shm"] {
        let p = format!("{}{suffix}", env.db_path().display());
        assert!(
            std::path::Path::new(&p).exists(),
            "{p} was removed at close"
        );
    }
    read_with_every_tool(&env.db_path());
    // And after a `--once` run from cron.
    assert_code(&env.once().await, 0);
    read_with_every_tool(&env.db_path());
}

/// A configuration another user may not read is reported as unreadable, not as missing (the
/// adversarial pass: after a by-hand install, "does not exist" sent the operator looking for a
/// file that was there).
#[test]
fn an_unreadable_configuration_is_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "state_dir = \"/tmp\"\n").unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = as_reader(&[
        env!("CARGO_BIN_EXE_stellantis-sync"),
        "--config",
        cfg.to_str().unwrap(),
        "check-config",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("cannot be read by this user"), "{err}");
    assert!(!err.contains("does not exist"), "{err}");
}

/// Issue 23, case 4: an export onto a full disk failed (74, right) but left `.FILE.tmp-PID-wal`
/// and `-shm` behind, at some sizes with the refresh token inside, keeping the disk full, and
/// blamed the source database ("database or disk is full"). Now nothing of the export is left,
/// the message names the export file and the operating system's reason, and the source keeps
/// its token and its history; `backup --to` there leaves nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_onto_a_full_disk_leaves_nothing_and_names_the_file() {
    let env = Env::new(
        SimConfig {
            users: 1,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    // About 2.4 MB of stored bodies, so the export cannot fit in 1 MiB.
    {
        let c = env.db();
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
             INSERT INTO status_bodies (body_hash, account_id, vin, first_fetched_ts, body)
             SELECT randomblob(16), (SELECT account_id FROM accounts), 'VIN1', 1700000000 + i,
                    printf('{\"pad\":\"%04000d\"}', i) FROM n",
            [],
        )
        .unwrap();
    }
    let token = stored_refresh_token(&env.state_dir(), "user1").unwrap();
    let bodies = || env.count("SELECT count(*) FROM status_bodies");
    let before = bodies();
    let full = env.dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    if !mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=1m",
        "tmpfs",
        full.to_str().unwrap(),
    ]) {
        panic!("this test needs root to mount a tmpfs (CI runs as root)");
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            umount(&self.0);
        }
    }
    let _guard = Unmount(full.clone());
    let dest = full.join("user1.sqlite");
    let o = env
        .run(
            &[
                "export-account",
                "user1",
                "--to",
                dest.to_str().unwrap(),
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await;
    assert_code(&o, 74);
    let out = text(&o);
    assert!(
        out.contains(&format!("database {}:", dest.display()))
            && out.contains("No space left on device"),
        "the message names the export file and why: {out}"
    );
    assert!(
        !out.contains(&format!("database {}", env.db_path().display())),
        "the source database is blamed: {out}"
    );
    let left: Vec<_> = std::fs::read_dir(&full)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
    assert_eq!(
        stored_refresh_token(&env.state_dir(), "user1").unwrap(),
        token
    );
    assert!(env.sim.refresh_token_is_live(&token));
    assert_eq!(bodies(), before);
    // What held: a backup there fails the same way and leaves nothing of its own.
    let o = env
        .run(
            &["backup", "--to", full.join("b.sqlite").to_str().unwrap()],
            &[],
        )
        .await;
    assert_code(&o, 74);
    let left: Vec<_> = std::fs::read_dir(&full)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left by the backup: {left:?}");
    // Elsewhere the export goes through, and the account syncs after its import.
    let roomy = tempfile::tempdir().unwrap();
    let file = roomy.path().join("user1.sqlite");
    let f = file.to_str().unwrap();
    assert_code(
        &env.run(
            &[
                "export-account",
                "user1",
                "--to",
                f,
                "--with-tokens",
                "--remove",
            ],
            &[],
        )
        .await,
        0,
    );
    assert_code(
        &env.run(&["import-account", f, "--with-tokens"], &[]).await,
        0,
    );
    assert_code(&env.once().await, 0);
}
