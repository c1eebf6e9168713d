//! Every copy of the state is safe (issue 23): export files, imports, shards and backups, tried
//! as an operator would, mistakes included, against an identity provider with family revocation
//! (`SimConfig::family_revocation`, the simulator's `--family-revocation`: replaying a rotated
//! refresh token revokes the live one of its chain, as RFC 9700 recommends). The oracle: one
//! refresh-token chain lives in exactly one state directory (no rotated-out token is ever
//! presented: `Stats::reused_refresh` stays 0), no token is on disk outside the token store and
//! the final export file, and every leftover is removed.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Acct, BIN, Env, Opts, assert_code, stored_refresh_token, text};
use stellantis_sync::shard::shard_of;
use stellantis_sync::sim::SimConfig;

fn revoking(users: usize) -> SimConfig {
    SimConfig {
        users,
        family_revocation: true,
        ..SimConfig::default()
    }
}

/// Another instance (its own directory, state and database) with these accounts, against the
/// same simulator.
fn instance(env: &Env, accounts: &[Acct], opts: &Opts) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        common::config_text(&env.sim, dir.path(), accounts, opts),
    )
    .unwrap();
    (dir, config)
}

async fn run(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the binary ran for more than 2 minutes")
        .unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir` (recursively) that holds `secret`, except the files in `allowed`.
fn files_holding(dir: &Path, secret: &str, allowed: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if !allowed.contains(&p) && contains(&std::fs::read(&p).unwrap(), secret) {
                found.push(p);
            }
        }
    }
    found
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn ok_runs(db: &Path, account: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sync_runs JOIN accounts USING (account_id) WHERE name = ?1 AND status = 'ok'",
            [account],
            |r| r.get(0),
        )
        .unwrap()
}

/// Case 1: one export file moved one chain into two places. A exports `--remove
/// --with-tokens`, B imports it and rotates the token, and the same file imported into C was
/// accepted: C then presented the rotated-out token and the chain died in B too. Now the
/// import erases the token from the file and marks it spent; C (and B again) refuse it, with
/// or without `--with-tokens`, and B's chain lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_file_moves_a_chain_once() {
    let a = Env::new(
        revoking(2),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&a.once().await, 0);
    let bare = [Acct::bare(&a.sim, 1)];
    let (bdir, bcfg) = instance(&a, &bare, &Opts::default());
    let (cdir, ccfg) = instance(&a, &bare, &Opts::default());
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("user1.sqlite");
    let f = file.to_str().unwrap();
    let token = stored_refresh_token(&a.state_dir(), "user1").unwrap();
    let o = a
        .run(
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
        .await;
    assert_code(&o, 0);
    assert!(
        text(&o).contains("can be imported once") && text(&o).contains("Do not copy"),
        "the operator is told the file is single-use: {}",
        text(&o)
    );
    let o = run(&bcfg, &["import-account", f, "--with-tokens"], &[]).await;
    assert_code(&o, 0);
    assert!(text(&o).contains("is spent"), "{}", text(&o));
    assert!(
        !contains(&std::fs::read(&file).unwrap(), &token),
        "the imported file still holds the token"
    );
    assert_eq!(
        names_in(work.path()),
        vec!["user1.sqlite"],
        "no journal left"
    );
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    // The same file, elsewhere and here again, with and without --with-tokens: refused, and
    // nothing reaches C's token store or database.
    for (cfg, with) in [(&ccfg, true), (&ccfg, false), (&bcfg, true)] {
        let mut args = vec!["import-account", f];
        if with {
            args.push("--with-tokens");
        }
        let o = run(cfg, &args, &[]).await;
        assert_code(&o, 65);
        assert!(text(&o).contains("already imported"), "{}", text(&o));
    }
    assert!(!cdir.path().join("state/tokens/user1.json").exists());
    // A copy of the spent file is spent too.
    let copy = work.path().join("copy.sqlite");
    std::fs::copy(&file, &copy).unwrap();
    let o = run(
        &ccfg,
        &["import-account", copy.to_str().unwrap(), "--with-tokens"],
        &[],
    )
    .await;
    assert_code(&o, 65);
    // B's chain is alive: its next pass syncs, and no rotated-out token was ever presented.
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    // A's run, then B's two.
    assert_eq!(
        ok_runs(&bdir.path().join("state/stellantis-sync.sqlite"), "user1"),
        3
    );
    assert_eq!(a.sim.stats().reused_refresh, 0);
    let live = stored_refresh_token(&bdir.path().join("state"), "user1").unwrap();
    assert!(a.sim.refresh_token_is_live(&live));
    // The live token is on disk in B's token store, and nowhere else.
    for (dir, allowed) in [
        (
            bdir.path(),
            vec![bdir.path().join("state/tokens/user1.json")],
        ),
        (cdir.path(), vec![]),
        (a.dir.path(), vec![]),
        (work.path(), vec![]),
    ] {
        assert_eq!(files_holding(dir, &live, &allowed), Vec::<PathBuf>::new());
    }
}

/// Case 2: with the one-time `refresh_token` in the configuration of A, B and C, moving
/// A → B → C let B present the bootstrap token (long rotated out) on its next run, since the
/// register of presented bootstrap tokens stayed in A: C's chain was revoked (77). Now the
/// register travels with the record, and B and A never present it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_register_travels_with_the_account() {
    let a = Env::new(
        revoking(2),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    let configured = text_of(&a.config);
    assert_code(&a.once().await, 0);
    let same = |dir: &tempfile::TempDir| {
        let cfg = dir.path().join("config.toml");
        let state = a.dir.path().join("state").display().to_string();
        std::fs::write(
            &cfg,
            configured.replace(&state, &dir.path().join("state").display().to_string()),
        )
        .unwrap();
        cfg
    };
    let (bdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bcfg, ccfg) = (same(&bdir), same(&cdir));
    let work = tempfile::tempdir().unwrap();
    let (f1, f2) = (work.path().join("1.sqlite"), work.path().join("2.sqlite"));
    let export = |f: &Path| {
        vec![
            "export-account".to_owned(),
            "user1".to_owned(),
            "--to".to_owned(),
            f.display().to_string(),
            "--with-tokens".to_owned(),
            "--remove".to_owned(),
        ]
    };
    assert_code(&run(&a.config, &args(&export(&f1)), &[]).await, 0);
    let import = |f: &Path| {
        vec![
            "import-account".to_owned(),
            f.display().to_string(),
            "--with-tokens".to_owned(),
        ]
    };
    assert_code(&run(&bcfg, &args(&import(&f1)), &[]).await, 0);
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    assert_code(&run(&bcfg, &args(&export(&f2)), &[]).await, 0);
    assert_code(&run(&ccfg, &args(&import(&f2)), &[]).await, 0);
    assert_code(&run(&ccfg, &["--once"], &[]).await, 0);
    // B and A still have the account, and its bootstrap token, in their configuration: they
    // need a login (77), but never present the token.
    for cfg in [&bcfg, &a.config] {
        let o = run(cfg, &["--once"], &[]).await;
        assert_code(&o, 77);
    }
    assert_eq!(
        a.sim.stats().reused_refresh,
        0,
        "a rotated-out token was presented"
    );
    assert_code(&run(&ccfg, &["--once"], &[]).await, 0);
    // One run in A, one in B, two in C: the history travelled too.
    assert_eq!(
        ok_runs(&cdir.path().join("state/stellantis-sync.sqlite"), "user1"),
        4
    );
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn text_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Case 3: a SIGKILL during `export-account --remove --with-tokens` left `.NAME.tmp-PID`, its
/// `-wal` (the refresh token in plain text) and `-shm` in the destination, and a later export
/// succeeded without removing them. Now the file is built without a journal or WAL, in a
/// temporary file owned by the exporter's lock and listed in the token store: the next export
/// (to any directory), import or start removes it. The source keeps its token and history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_export_leaves_no_token_behind() {
    let a = Env::new(
        revoking(3),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&a.once().await, 0);
    let token = stored_refresh_token(&a.state_dir(), "user1").unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = one.path().join("user1.sqlite");
    let kill = [("STELLANTIS_CRASH_AT", "export_written")];
    let exporting = |f: &Path, name: &'static str| {
        vec![
            "export-account".to_owned(),
            name.to_owned(),
            "--to".to_owned(),
            f.display().to_string(),
            "--with-tokens".to_owned(),
            "--remove".to_owned(),
        ]
    };
    for next in ["export", "once"] {
        let o = a.run(&args(&exporting(&file, "user1")), &kill).await;
        assert_eq!(
            o.status.code(),
            None,
            "the export was not killed: {}",
            text(&o)
        );
        let left = names_in(one.path());
        assert_eq!(left.len(), 1, "only the temporary file: {left:?}");
        assert!(left[0].starts_with(".user1.sqlite.tmp-"), "{left:?}");
        assert!(contains(
            &std::fs::read(one.path().join(&left[0])).unwrap(),
            &token
        ));
        // The source still has both.
        assert_eq!(
            stored_refresh_token(&a.state_dir(), "user1").unwrap(),
            token
        );
        assert!(ok_runs(&a.db_path(), "user1") > 0);
        // The next run, whatever it is, removes it.
        match next {
            "export" => {
                let other = two.path().join("user2.sqlite");
                let o = a
                    .run(
                        &["export-account", "user2", "--to", other.to_str().unwrap()],
                        &[],
                    )
                    .await;
                assert_code(&o, 0);
            }
            _ => assert_code(&a.once().await, 0),
        }
        assert_eq!(
            names_in(one.path()),
            Vec::<String>::new(),
            "after the next {next}"
        );
    }
    // And the export then goes through.
    assert_code(&a.run(&args(&exporting(&file, "user1")), &[]).await, 0);
    assert_eq!(names_in(one.path()), vec!["user1.sqlite"]);
    assert_eq!(a.sim.stats().reused_refresh, 0);
}

/// An import killed after it claimed the file (and saved the token) is finished by the same
/// command in the same place, and refused everywhere else in the meantime: the token never
/// lives in two state directories. One killed after its commit only spends the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_is_finished_where_it_began_and_nowhere_else() {
    let a = Env::new(
        revoking(2),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&a.once().await, 0);
    let bare = [Acct::bare(&a.sim, 1), Acct::bare(&a.sim, 2)];
    let (bdir, bcfg) = instance(&a, &bare, &Opts::default());
    let (cdir, ccfg) = instance(&a, &bare, &Opts::default());
    let work = tempfile::tempdir().unwrap();
    for (account, crash) in [
        ("user1", "import_token_saved"),
        ("user2", "import_committed"),
    ] {
        let file = work.path().join(format!("{account}.sqlite"));
        let f = file.to_str().unwrap();
        let o = a
            .run(
                &[
                    "export-account",
                    account,
                    "--to",
                    f,
                    "--with-tokens",
                    "--remove",
                ],
                &[],
            )
            .await;
        assert_code(&o, 0);
        let o = run(
            &bcfg,
            &["import-account", f, "--with-tokens"],
            &[("STELLANTIS_CRASH_AT", crash)],
        )
        .await;
        assert_eq!(o.status.code(), None, "{crash}: {}", text(&o));
        let o = run(&ccfg, &["import-account", f, "--with-tokens"], &[]).await;
        assert_code(&o, 65);
        assert!(text(&o).contains("was claimed"), "{}", text(&o));
        assert!(
            !cdir
                .path()
                .join(format!("state/tokens/{account}.json"))
                .exists()
        );
        let o = run(&bcfg, &["import-account", f, "--with-tokens"], &[]).await;
        assert_code(&o, 0);
        assert!(text(&o).contains("is spent"), "{crash}: {}", text(&o));
        let o = run(&ccfg, &["import-account", f, "--with-tokens"], &[]).await;
        assert_code(&o, 65);
        assert!(text(&o).contains("already imported"), "{}", text(&o));
    }
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    let bdb = bdir.path().join("state/stellantis-sync.sqlite");
    assert!(ok_runs(&bdb, "user1") >= 2 && ok_runs(&bdb, "user2") >= 2);
    assert_eq!(a.sim.stats().reused_refresh, 0);
}

/// The state directory and database of shard instance `i`, as the systemd template lays them
/// out, for one configuration.
fn shard_env(root: &Path, i: u32) -> (PathBuf, PathBuf) {
    let state = root.join(format!("fleet/{i}"));
    (state.clone(), state.join("stellantis-sync.sqlite"))
}

async fn on_shard(env: &Env, i: u32, n: u32, args: &[&str]) -> std::process::Output {
    let (state, db) = shard_env(env.dir.path(), i);
    let shard = format!("{i}/{n}");
    let mut all = vec!["--shard", shard.as_str()];
    all.extend_from_slice(args);
    env.run(
        &all,
        &[
            ("STELLANTIS_SYNC_STATE_DIR", state.to_str().unwrap()),
            ("STELLANTIS_SYNC_DATABASE", db.to_str().unwrap()),
        ],
    )
    .await
}

/// Case 5: shard mistakes went unreported. An import into shard 0's directory without `--shard`
/// of an account that hashes to shard 1 succeeded silently; after restarting the instances as
/// /3 before moving accounts, the old shard said nothing about the account it still held, and
/// the new one wrote a record without a refresh token, after which `import --with-tokens` was
/// refused. Now the import is refused with the right command (the state directory remembers
/// its shard), the old shard reports what it holds with the commands that move it, and the
/// move after the fact needs no login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_mistakes_are_reported_and_a_reshape_out_of_order_recovers() {
    // user2 is shard 1 of 2 and shard 2 of 3 (pinned in src/shard.rs): it moves when N grows.
    assert_eq!((shard_of("user2", 2), shard_of("user2", 3)), (1, 2));
    let env = Env::new(
        revoking(4),
        |s| (1..=4).map(|n| Acct::bootstrapped(s, n)).collect(),
        Opts::default(),
    )
    .await;
    for i in 0..2 {
        assert_code(&on_shard(&env, i, 2, &["--once"]).await, 0);
    }
    // The one-time tokens are used; the operator takes them out of the configuration.
    env.rewrite(
        &(1..=4).map(|n| Acct::bare(&env.sim, n)).collect::<Vec<_>>(),
        &Opts::default(),
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("user2.sqlite");
    let f = file.to_str().unwrap();
    let move_out = [
        "export-account",
        "user2",
        "--to",
        f,
        "--remove",
        "--with-tokens",
    ];
    assert_code(&on_shard(&env, 1, 2, &move_out).await, 0);
    // Into shard 0's directory without --shard: refused, naming the shard and the command.
    let (state0, db0) = shard_env(env.dir.path(), 0);
    let o = env
        .run(
            &["import-account", f, "--with-tokens"],
            &[
                ("STELLANTIS_SYNC_STATE_DIR", state0.to_str().unwrap()),
                ("STELLANTIS_SYNC_DATABASE", db0.to_str().unwrap()),
            ],
        )
        .await;
    assert_code(&o, 65);
    assert!(
        text(&o).contains("belongs to shard 1/2")
            && text(&o).contains("--shard 1/2 import-account"),
        "{}",
        text(&o)
    );
    assert!(!state0.join("tokens/user2.json").exists());
    assert_code(
        &on_shard(&env, 1, 2, &["import-account", f, "--with-tokens"]).await,
        0,
    );
    std::fs::remove_file(&file).unwrap();

    // Out of order: every instance restarted as /3 before user2 moved.
    let o = on_shard(&env, 1, 3, &["--once"]).await;
    assert_code(&o, 0);
    assert!(
        text(&o).contains("account `user2` is held here")
            && text(&o).contains("belongs to shard 2/3")
            && text(&o).contains("--shard 1/3 export-account user2"),
        "the old shard says nothing of what it holds: {}",
        text(&o)
    );
    let st = on_shard(&env, 1, 3, &["status"]).await;
    assert_code(&st, 0);
    assert!(text(&st).contains("belongs to shard 2/3"), "{}", text(&st));
    assert_code(&on_shard(&env, 0, 3, &["--once"]).await, 0);
    let o = on_shard(&env, 2, 3, &["--once"]).await;
    assert_code(&o, 77);
    let (state2, db2) = shard_env(env.dir.path(), 2);
    assert!(
        state2.join("tokens/user2.json").exists(),
        "the needs_reauth record"
    );
    // The recovery, as the warning says: no login.
    assert_code(&on_shard(&env, 1, 3, &move_out).await, 0);
    let o = on_shard(&env, 2, 3, &["import-account", f, "--with-tokens"]).await;
    assert_code(&o, 0);
    assert!(text(&o).contains("no login needed"), "{}", text(&o));
    assert_code(&on_shard(&env, 2, 3, &["--once"]).await, 0);
    // The run of the first layout, carried, and the new shard's own.
    assert_eq!(ok_runs(&db2, "user2"), 2, "history carried and extended");
    let st = on_shard(&env, 1, 3, &["status"]).await;
    assert!(!text(&st).contains("held here"), "{}", text(&st));
    assert_eq!(env.sim.stats().reused_refresh, 0);
}

/// Case 6: `stellantis-sync --shard I/N login --account NAME`, as the README says to sign an
/// account in on a shard instance, exited 64. Now it signs in into that instance's state
/// directory, and refuses an account of another shard, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_works_for_a_shard_instance() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    assert_eq!(shard_of("user2", 3), 2);
    let env = Env::new(
        revoking(2),
        |s| vec![Acct::bare(s, 1), Acct::bare(s, 2)],
        Opts::default(),
    )
    .await;
    let o = on_shard(&env, 0, 3, &["login", "--account", "user2"]).await;
    assert_code(&o, 78);
    assert!(text(&o).contains("belongs to shard 2/3"), "{}", text(&o));
    let (state, db) = shard_env(env.dir.path(), 2);
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["--shard", "2/3", "login", "--account", "user2"])
        .env("STELLANTIS_SYNC_STATE_DIR", &state)
        .env("STELLANTIS_SYNC_DATABASE", &db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let l = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("login printed no URL");
        if let Some(u) = l.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    let location = common::sign_in(&env.sim, &url, "user2@example.com", "password2").await;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{location}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert!(state.join("tokens/user2.json").exists());
    assert_code(&on_shard(&env, 2, 3, &["--once"]).await, 0);
    assert_eq!(ok_runs(&db, "user2"), 1);
}

/// Cases 7, 8 and 9, through the `backup` command: copies of one second ordered by their
/// counter (not as text), rotation after the clock was set back keeps the newest real copies,
/// and what a backup killed as PID 1 left (`.…sqlite.tmp-1` and its `-journal`) is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_rotation_orders_copies_by_what_they_are_and_removes_leftovers() {
    let env = Env::new(
        revoking(1),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts {
            extra_top: "[backup]\nkeep = 3\n".into(),
            ..Opts::default()
        },
    )
    .await;
    assert_code(&env.once().await, 0);
    let bdir = env.state_dir().join("backups");
    std::fs::create_dir_all(&bdir).unwrap();
    // A copy is a real SQLite database (rotation ignores files that are not: F9); a leftover
    // temporary file is whatever a killed writer left.
    let put = |name: &str| {
        if name.starts_with('.') {
            std::fs::write(bdir.join(name), b"x").unwrap();
        } else {
            rusqlite::Connection::open(bdir.join(name))
                .unwrap()
                .execute_batch("CREATE TABLE t(x)")
                .unwrap();
        }
        bdir.join(name)
    };
    // Case 7: …Z.sqlite, …Z-2.sqlite, …Z-10.sqlite of one second, keep = 3: the oldest goes.
    let first = put("stellantis-sync-20200101T000000Z.sqlite");
    let second = put("stellantis-sync-20200101T000000Z-2.sqlite");
    let tenth = put("stellantis-sync-20200101T000000Z-10.sqlite");
    // Case 9: a copy killed as PID 1.
    let pid1 = put(".stellantis-sync-20200101T000000Z.sqlite.tmp-1");
    let pid1_journal = put(".stellantis-sync-20200101T000000Z.sqlite.tmp-1-journal");
    assert_code(&env.run(&["backup"], &[]).await, 0);
    assert!(!first.exists(), "the oldest of one second stays");
    assert!(
        second.exists() && tenth.exists(),
        "a newer copy of one second was deleted"
    );
    assert!(
        !pid1.exists() && !pid1_journal.exists(),
        "the killed copy stays for ever"
    );
    // Case 8: copies named by a clock a century ahead (taken before it was set back): each new
    // backup deleted the one before it. Now the newest real copies stay.
    for n in names_in(&bdir) {
        std::fs::remove_file(bdir.join(n)).unwrap();
    }
    let ahead = [
        put("stellantis-sync-20990101T000000Z.sqlite"),
        put("stellantis-sync-20990101T000100Z.sqlite"),
        put("stellantis-sync-20990101T000200Z.sqlite"),
    ];
    let mut new = Vec::new();
    for _ in 0..2 {
        let before = names_in(&bdir);
        assert_code(&env.run(&["backup"], &[]).await, 0);
        new.extend(
            names_in(&bdir)
                .into_iter()
                .filter(|n| !before.contains(n) && !n.starts_with('.')),
        );
    }
    assert_eq!(new.len(), 2, "{:?}", names_in(&bdir));
    assert!(
        bdir.join(&new[0]).exists(),
        "the backup before was deleted: {:?}",
        names_in(&bdir)
    );
    assert!(bdir.join(&new[1]).exists());
    assert!(ahead[2].exists(), "{:?}", names_in(&bdir));
    assert!(
        !ahead[0].exists() && !ahead[1].exists(),
        "{:?}",
        names_in(&bdir)
    );
}

/// Issue 23, F7 and F6: a `backup` killed mid-copy leaves its temporary copy and `-journal` in the
/// backup directory; only the next `backup` removed them. Now `--once` (and the daemon's start,
/// which builds the engine the same way) removes what a dead writer left (its lock is gone)
/// and leaves a live writer's copy (the test holds its lock) alone. The same for the temporary
/// file of a state file's replacement (`backup.json`): before, `.tmpXXXXXX` stayed for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backups_temporary_copy_is_removed_by_the_next_once() {
    let env = Env::new(
        revoking(1),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    let bdir = env.state_dir().join("backups");
    std::fs::create_dir_all(&bdir).unwrap();
    let temp = |tag: &str| {
        bdir.join(format!(
            ".stellantis-sync-000001-20261207T120000Z.sqlite.tmp-{tag}"
        ))
    };
    let dead = temp("0123456789abcdef");
    let dead_journal = bdir.join(format!(
        "{}-journal",
        dead.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&dead, vec![0u8; 8192]).unwrap();
    std::fs::write(&dead_journal, b"journal").unwrap();
    let live = temp("fedcba9876543210");
    let held = std::fs::File::create(&live).unwrap();
    held.try_lock().unwrap();
    // F6: a `backup` (or any run) killed while replacing a state file in state_dir: this
    // build's owned temporary and an earlier build's `.tmpXXXXXX`.
    let state = env.state_dir();
    let json_dead = state.join(".backup.json.tmp-00000000000000aa");
    let legacy = state.join(".tmpo9ARy1");
    std::fs::write(&json_dead, b"{}").unwrap();
    std::fs::write(&legacy, b"{}").unwrap();
    let json_live = state.join(".budget.json.tmp-00000000000000bb");
    let json_held = std::fs::File::create(&json_live).unwrap();
    json_held.try_lock().unwrap();
    assert_code(&env.once().await, 0);
    assert!(
        !json_dead.exists() && !legacy.exists(),
        "a killed state-file write stays: {:?}",
        names_in(&state)
    );
    assert!(json_live.exists(), "a live state-file write was removed");
    drop(json_held);
    assert!(
        !dead.exists() && !dead_journal.exists(),
        "a dead writer's copy stays: {:?}",
        names_in(&bdir)
    );
    assert!(live.exists(), "a live writer's copy was removed");
    drop(held);
}

/// Issue 23, the reviewer's kill loop: 20 `backup`s SIGKILLed 0 to 28.5 ms after their start
/// (1.5 ms apart: a fixed schedule, so the same instants every run), then one `--once`: no
/// temporary file of any kind is left in the state directory, `tokens/` or the backup
/// directory. Where each kill lands varies with the machine; what must hold does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_killed_at_any_instant_leave_nothing_after_the_next_once() {
    use std::os::unix::process::ExitStatusExt as _;
    let env = Env::new(
        revoking(1),
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let state = env.state_dir();
    let dirs = [state.clone(), state.join("tokens"), state.join("backups")];
    std::fs::create_dir_all(&dirs[2]).unwrap();
    let leftovers = || -> Vec<String> {
        dirs.iter()
            .flat_map(|d| names_in(d))
            .filter(|n| n.contains(".tmp"))
            .collect()
    };
    let (mut killed, mut left_by_kills) = (0, 0);
    for i in 0..20u64 {
        let mut child = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .arg("backup")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_micros(1500 * i)).await;
        let _ = child.start_kill();
        let status = child.wait().await.unwrap();
        killed += usize::from(status.signal() == Some(9));
        left_by_kills += leftovers().len();
    }
    assert!(killed > 0, "no backup was killed");
    eprintln!("{killed}/20 killed, {left_by_kills} leftovers seen between kills");
    assert_code(&env.once().await, 0);
    assert_eq!(leftovers(), Vec::<String>::new(), "left after --once");
}

/// Case 10: with `external_checkpointing = true` (Litestream mode), a start after a SIGKILL
/// checkpointed the WAL behind Litestream's back (the dead run was closed before automatic
/// checkpoints were turned off), and `import-account` and `export-account --remove` opened the
/// database with automatic checkpoints on. Now no opener checkpoints: with 7 MB in the WAL and
/// a reader holding a snapshot, the main file does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litestream_mode_holds_from_the_first_statement_of_every_opener() {
    let env = Env::new(
        revoking(2),
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts {
            extra_top: "external_checkpointing = true\n".into(),
            ..Opts::default()
        },
    )
    .await;
    assert_code(&env.once().await, 0);
    let db = env.db_path();
    {
        // Written as a daemon in this mode writes: nothing checkpoints. 1,800 pages of filler
        // and a run left `running` by a killed process.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch("CREATE TABLE filler (b BLOB)").unwrap();
        for _ in 0..1800 {
            c.execute("INSERT INTO filler VALUES (randomblob(3900))", [])
                .unwrap();
        }
        c.execute(
            "INSERT INTO sync_runs (account_id, started_at, status)
             SELECT account_id, '2026-01-01T00:00:00.000Z', 'running' FROM accounts LIMIT 1",
            [],
        )
        .unwrap();
    }
    let wal = std::fs::metadata(format!("{}-wal", db.display()))
        .unwrap()
        .len();
    assert!(wal > 7_000_000, "{wal}");
    // Litestream's reader: a read transaction held open.
    let reader =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM filler", [], |r| r.get(0))
        .unwrap();
    let size = || std::fs::metadata(&db).unwrap().len();
    let main = size();
    assert_code(&env.once().await, 0);
    assert_eq!(size(), main, "the start after a kill checkpointed");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("user2.sqlite");
    let f = file.to_str().unwrap();
    let o = env
        .run(
            &[
                "export-account",
                "user2",
                "--to",
                f,
                "--remove",
                "--with-tokens",
            ],
            &[],
        )
        .await;
    assert_code(&o, 0);
    assert_eq!(size(), main, "export-account --remove checkpointed");
    assert_code(
        &env.run(&["import-account", f, "--with-tokens"], &[]).await,
        0,
    );
    assert_eq!(size(), main, "import-account checkpointed");
    reader.execute_batch("COMMIT").unwrap();
}

/// F5: a SIGKILL of `export-account --remove --with-tokens` after the export file's rename and
/// before the token record was unlinked left the live token in the store and in the final
/// export file; the source rotated it and the file then imported a rotated-out token elsewhere
/// (family revocation: the chain died). Now the record is marked as moving out before the
/// rename and the next run finishes the move (the export file is there) or rolls it back (the
/// rename never happened). Killed at every point of the export, and inside the undo of a
/// failed history removal: afterwards the token is in exactly one place, the source's next run
/// never presents it, and wherever it is, its chain lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_export_leaves_the_token_in_exactly_one_place() {
    let points: [(&str, Option<&str>); 6] = [
        ("export_written", None),
        ("export_moving_out", None),
        ("export_renamed", None),
        ("export_history_removed", None),
        ("export_record_removed", None),
        ("export_undo_renamed", Some("transfer_remove")),
    ];
    let a = Env::new(
        revoking(points.len()),
        |s| {
            (1..=points.len())
                .map(|n| Acct::bootstrapped(s, n))
                .collect()
        },
        Opts::default(),
    )
    .await;
    assert_code(&a.once().await, 0);
    let work = tempfile::tempdir().unwrap();
    for (i, (crash, fail)) in points.iter().enumerate() {
        let account = format!("user{}", i + 1);
        let token = stored_refresh_token(&a.state_dir(), &account).unwrap();
        let file = work.path().join(format!("{account}.sqlite"));
        let f = file.to_str().unwrap();
        let mut envs = vec![("STELLANTIS_CRASH_AT", *crash)];
        envs.extend(fail.map(|p| ("STELLANTIS_FAIL_AT", p)));
        let exporting = [
            "export-account",
            &account,
            "--to",
            f,
            "--with-tokens",
            "--remove",
        ];
        let o = a.run(&exporting, &envs).await;
        assert_eq!(o.status.code(), None, "{crash}: not killed: {}", text(&o));
        // The source's next run recovers and rotates what is still its own.
        a.once().await;
        let in_file = file.exists();
        let in_store = stored_refresh_token(&a.state_dir(), &account);
        assert!(
            in_file != in_store.is_some(),
            "{crash}: export file {in_file}, store {in_store:?}"
        );
        assert!(
            !a.state_dir()
                .join(format!("tokens/{account}.moving-out"))
                .exists(),
            "{crash}: the move was left undecided"
        );
        if in_file {
            assert!(contains(&std::fs::read(&file).unwrap(), &token), "{crash}");
            let (_bdir, bcfg) = instance(&a, &[Acct::bare(&a.sim, i + 1)], &Opts::default());
            let o = run(&bcfg, &["import-account", f, "--with-tokens"], &[]).await;
            assert_code(&o, 0);
            assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
            assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
        } else {
            // Rolled back: the export goes through now.
            assert_code(&a.run(&exporting, &[]).await, 0);
            assert!(stored_refresh_token(&a.state_dir(), &account).is_none());
        }
        assert_eq!(a.sim.stats().reused_refresh, 0, "{crash}");
    }
    a.once().await;
    assert_eq!(a.sim.stats().reused_refresh, 0);
}

/// F8: an import cut off after it saved the token left it in the store and in the claimed
/// file; once the instance had rotated it, the re-import refused and told the operator to
/// delete the live record and import the file's token (rotated out: family revocation killed
/// the chain). Now the re-import recognises the store's chain as the file's (the same chain
/// start) and keeps the live token; as the instance has synced the account since, the file's
/// history can no longer go in, and the refusal says to keep both the record and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_import_is_finished_without_restoring_the_files_older_token() {
    // Access tokens short enough that every run rotates the refresh token.
    let sim = SimConfig {
        access_ttl: Duration::from_secs(5),
        ..revoking(1)
    };
    let a = Env::new(sim, |s| vec![Acct::bootstrapped(s, 1)], Opts::default()).await;
    assert_code(&a.once().await, 0);
    let (bdir, bcfg) = instance(&a, &[Acct::bare(&a.sim, 1)], &Opts::default());
    let (_cdir, ccfg) = instance(&a, &[Acct::bare(&a.sim, 1)], &Opts::default());
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("user1.sqlite");
    let f = file.to_str().unwrap();
    let exporting = [
        "export-account",
        "user1",
        "--to",
        f,
        "--with-tokens",
        "--remove",
    ];
    assert_code(&a.run(&exporting, &[]).await, 0);
    let importing = ["import-account", f, "--with-tokens"];
    let o = run(
        &bcfg,
        &importing,
        &[("STELLANTIS_CRASH_AT", "import_token_saved")],
    )
    .await;
    assert_eq!(o.status.code(), None, "not killed: {}", text(&o));
    let bstate = bdir.path().join("state");
    let saved = stored_refresh_token(&bstate, "user1").unwrap();
    // The instance runs and rotates the token it holds.
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    assert_ne!(stored_refresh_token(&bstate, "user1").unwrap(), saved);
    let live = stored_refresh_token(&bstate, "user1").unwrap();
    // The instance synced the account since, so the file's history cannot go in any more:
    // refused, nothing changed, and the live token is the one to keep.
    let o = run(&bcfg, &importing, &[]).await;
    assert_code(&o, 65);
    assert!(text(&o).contains("token chain is live"), "{}", text(&o));
    assert!(!text(&o).contains("remove"), "{}", text(&o));
    assert_eq!(stored_refresh_token(&bstate, "user1").unwrap(), live);
    let o = run(&ccfg, &importing, &[]).await;
    assert_code(&o, 65);
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    assert_code(&run(&bcfg, &["--once"], &[]).await, 0);
    let bdb = bstate.join("stellantis-sync.sqlite");
    assert!(ok_runs(&bdb, "user1") >= 3);
    assert_eq!(a.sim.stats().reused_refresh, 0);
}
