//! The token lifecycle against the simulator, through the real binary: bootstrap by each route,
//! proactive refresh, 401 → refresh → retry, rotation, crashes around a refresh, invalid_grant,
//! `login` end to end, and no secret in any output.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use stellantis_sync::sim::{PasswordGrant, SimConfig};

fn sim_cfg() -> SimConfig {
    SimConfig {
        users: 3,
        vehicle_counts: vec![2, 3, 1],
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_a_configured_refresh_token_then_reuse_the_access_token() {
    let mut configured = None;
    let env = Env::new(
        sim_cfg(),
        |s| {
            let a = Acct::bootstrapped(s, 1);
            configured = a.refresh_token.clone();
            vec![a]
        },
        Opts::default(),
    )
    .await;
    let configured = configured.unwrap();
    let o = env.once().await;
    assert_code(&o, 0);
    let stored = stored_refresh_token(&env.state_dir(), "user1").unwrap();
    assert_ne!(stored, configured);
    assert!(env.sim.refresh_token_is_live(&stored));
    assert!(!env.sim.refresh_token_is_live(&configured));
    // A second run uses the stored access token: no token request at all.
    let grants = env.sim.stats().grants.clone();
    assert_code(&env.once().await, 0);
    assert_eq!(env.sim.stats().grants, grants);
    assert_eq!(env.sim.stats().reused_refresh, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM sync_runs WHERE status = 'ok'"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_with_the_password_grant() {
    let env = Env::new(
        sim_cfg(),
        |s| vec![Acct::with_password(s, 2)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    assert_eq!(env.sim.stats().grants.get("password"), Some(&1));
    assert_eq!(
        stored_record(&env.state_dir(), "user2")["source"],
        "password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_password_grant_means_needs_reauth_and_exit_77() {
    let cfg = SimConfig {
        password_grant: PasswordGrant::Dead,
        ..sim_cfg()
    };
    let env = Env::new(
        cfg,
        |s| vec![Acct::with_password(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    let o = env.once().await;
    assert_code(&o, 77);
    let out = text(&o);
    assert!(
        out.contains("stellantis-sync login --account user1"),
        "{out}"
    );
    assert!(out.contains("server_error"), "{out}");
    // The other account synced.
    assert_eq!(env.count("SELECT count(*) FROM sync_runs r JOIN accounts a USING (account_id) WHERE a.name='user2' AND status='ok'"), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM accounts WHERE name='user1' AND state='needs_reauth'"),
        1
    );
    // The dead grant is not tried again on the next run.
    let idp = env.sim.stats().idp_requests;
    assert_code(&env.once().await, 77);
    assert_eq!(
        env.sim.stats().idp_requests,
        idp,
        "no token request for a needs_reauth account"
    );
    let status = env.run(&["status"], &[]).await;
    assert_code(&status, 0);
    let s = text(&status);
    let line = s.lines().find(|l| l.starts_with("user1")).unwrap();
    assert!(
        line.contains("needs_reauth") && line.contains("login --account user1"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_rotates_and_never_replays() {
    // Access tokens live 60 s; a 5-minute margin makes every run refresh ahead of expiry.
    let cfg = SimConfig {
        access_ttl: Duration::from_secs(60),
        ..sim_cfg()
    };
    let env = Env::new(
        cfg,
        |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
        Opts::default(),
    )
    .await;
    let mut previous: Vec<String> = Vec::new();
    for _ in 0..4 {
        assert_code(&env.once().await, 0);
        let rt = stored_refresh_token(&env.state_dir(), "user1").unwrap();
        assert!(env.sim.refresh_token_is_live(&rt));
        for old in &previous {
            assert!(
                !env.sim.refresh_token_is_live(old.as_str()),
                "an old refresh token is still live"
            );
        }
        previous.push(rt);
    }
    let s = env.sim.stats();
    assert_eq!(
        s.grants.get("refresh_token"),
        Some(&8),
        "one refresh per account per run"
    );
    assert_eq!((s.reused_refresh, s.invalid_grant), (0, 0));
    assert_eq!(env.sim.live_refresh_tokens("user1@example.com"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_once_and_retries() {
    let opts = Opts {
        refresh_margin: "1s".into(),
        ..Opts::default()
    };
    let env = Env::new(sim_cfg(), |s| vec![Acct::bootstrapped(s, 1)], opts).await;
    assert_code(&env.once().await, 0);
    // The server's clock moves past the access token's life; ours does not know.
    env.sim.advance_clock(Duration::from_secs(3600));
    env.sim.reset_stats();
    assert_code(&env.once().await, 0);
    let s = env.sim.stats();
    assert_eq!(s.count("GET /connectedcar/v4/user/vehicles", 401), 1);
    assert_eq!(s.count("GET /connectedcar/v4/user/vehicles", 200), 1);
    assert_eq!(s.grants.get("refresh_token"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_needs_reauth_while_the_others_sync_and_a_password_recovers() {
    let env = Env::new(
        sim_cfg(),
        |s| {
            let mut with_pw = Acct::bootstrapped(s, 3);
            let (email, pw, _) = s.users()[2].clone();
            with_pw.username = Some(email);
            with_pw.password = Some(pw);
            vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2), with_pw]
        },
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    env.sim.revoke_user("user1@example.com");
    env.sim.revoke_user("user3@example.com");
    env.sim.advance_clock(Duration::from_secs(3600));
    let o = env.once().await;
    assert_code(&o, 77);
    let out = text(&o);
    assert_eq!(
        out.matches("needs re-authorization").count(),
        1,
        "one error line: {out}"
    );
    let ok = |name: &str| {
        env.count(&format!(
        "SELECT count(*) FROM sync_runs r JOIN accounts a USING (account_id) WHERE a.name='{name}' AND status='ok'"))
    };
    assert_eq!(
        (ok("user1"), ok("user2"), ok("user3")),
        (1, 2, 2),
        "user3 logged in again with its password"
    );
    assert_eq!(
        stored_record(&env.state_dir(), "user3")["source"],
        "password"
    );
    let invalid = env.sim.stats().invalid_grant;
    for _ in 0..3 {
        assert_code(&env.once().await, 77);
    }
    assert_eq!(
        env.sim.stats().invalid_grant,
        invalid,
        "a dead grant is never retried"
    );
}

/// Crashes at named points around a refresh, against a strict server (no grace, no reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_around_a_refresh() {
    for (point, survives) in [
        ("before_refresh_post", true),
        ("after_store_durable", true),
        ("store_renamed", true),
        ("after_token", true),
        ("mid_pagination", true),
        ("inside_db_transaction", true),
        ("after_db_commit", true),
        ("after_refresh_response", false),
        ("store_temp_synced", false),
    ] {
        let cfg = SimConfig {
            access_ttl: Duration::from_secs(60),
            ..sim_cfg()
        };
        let env = Env::new(
            cfg,
            |s| vec![Acct::bootstrapped(s, 1), Acct::bootstrapped(s, 2)],
            Opts {
                max_concurrent: 1,
                ..Opts::default()
            },
        )
        .await;
        assert_code(&env.once().await, 0);
        let crashed = env
            .run(&["--once"], &[("STELLANTIS_CRASH_AT", point)])
            .await;
        assert!(
            crashed.status.code().is_none() || crashed.status.code() == Some(134),
            "{point}: {:?}",
            crashed.status
        );
        let ok = env
            .db()
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap();
        assert_eq!(ok, "ok", "{point}");
        let orphan = env.count("SELECT count(*) FROM vehicle_changes c JOIN sync_runs r USING (run_id) WHERE r.status != 'ok'");
        assert_eq!(orphan, 0, "{point}: change rows of an unfinished run");
        let after = env.once().await;
        if survives {
            assert_code(&after, 0);
            let rt = stored_refresh_token(&env.state_dir(), "user1").unwrap();
            assert!(env.sim.refresh_token_is_live(&rt), "{point}");
            assert_eq!(
                env.sim.stats().grants.get("password"),
                None,
                "{point}: no new login"
            );
        } else {
            // The server rotated but the store still holds the old token: loud, isolated.
            assert_code(&after, 77);
            assert!(text(&after).contains("login --account user1"), "{point}");
            let user2_ok = env.count("SELECT count(*) FROM sync_runs r JOIN accounts a USING (account_id) WHERE a.name='user2' AND status='ok'");
            assert!(user2_ok >= 2, "{point}: the other account must go on");
        }
        assert!(
            !std::fs::read_dir(env.state_dir().join("tokens"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp")),
            "{point}: stale temporary file left after restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_end_to_end_against_the_simulated_form() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let env = Env::new(sim_cfg(), |s| vec![Acct::bare(s, 1)], Opts::default()).await;
    let o = env.once().await;
    assert_code(&o, 77);
    assert!(text(&o).contains("login --account user1"));
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["login", "--account", "user1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let l = lines
            .next_line()
            .await
            .unwrap()
            .expect("login printed no URL");
        if let Some(u) = l.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    assert!(url.contains("code_challenge_method=S256"));
    // The person signs in on the simulated IdP's form.
    let location = sign_in(&env.sim, &url, "user1@example.com", "password1").await;
    assert!(location.starts_with("mymap://oauth2redirect/"));
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
    assert_eq!(stored_record(&env.state_dir(), "user1")["source"], "login");
    assert_code(&env.once().await, 0);
    assert_eq!(env.sim.stats().grants.get("authorization_code"), Some(&1));
}

fn forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    let mut v = vec![
        secret.to_owned(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        base64::engine::general_purpose::STANDARD.encode(secret),
    ];
    if secret.len() >= 12 {
        v.push(secret[..12].to_owned());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_at_trace_level() {
    use base64::Engine;
    let cfg = SimConfig {
        access_ttl: Duration::from_secs(60),
        password_grant: PasswordGrant::Dead,
        ..sim_cfg()
    };
    let mut configured = Vec::new();
    let env = Env::new(
        cfg,
        |s| {
            let a = vec![
                Acct::bootstrapped(s, 1),
                Acct::with_password(s, 2),
                Acct::bootstrapped(s, 3),
            ];
            configured.extend(a.iter().filter_map(|x| x.refresh_token.clone()));
            configured.extend(a.iter().filter_map(|x| x.password.clone()));
            a
        },
        Opts::default(),
    )
    .await;
    let mut outputs = String::new();
    let trace = [("RUST_LOG", "trace")];
    for _ in 0..2 {
        outputs.push_str(&text(&env.run(&["--once"], &trace).await));
    }
    env.sim.advance_clock(Duration::from_secs(3600));
    env.sim.revoke_user("user3@example.com");
    outputs.push_str(&text(&env.run(&["--once"], &trace).await));
    outputs.push_str(&text(&env.run(&["status"], &trace).await));
    outputs.push_str(&text(&env.run(&["check-config"], &trace).await));
    // A wrong-typed secret in the configuration.
    let bad = env.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "state_dir = \"/tmp\"\n[app]\nclient_id = \"x\"\nclient_secret = 424242424242\n",
    )
    .unwrap();
    let o = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    outputs.push_str(&text(&o));
    let dump = std::process::Command::new("sqlite3")
        .arg(env.db_path())
        .arg(".dump")
        .output()
        .unwrap();
    outputs.push_str(&String::from_utf8_lossy(&dump.stdout));
    let mut secrets = configured;
    secrets.push(stellantis_sync::sim::DEFAULT_CLIENT_SECRET.into());
    secrets.push("424242424242".into());
    for a in ["user1", "user2", "user3"] {
        if let Ok(bytes) = std::fs::read(env.state_dir().join(format!("tokens/{a}.json"))) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for k in ["refresh_token", "access_token"] {
                if let Some(t) = v[k].as_str() {
                    secrets.push(t.to_owned());
                }
            }
        }
    }
    assert!(secrets.len() >= 7, "{secrets:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        stellantis_sync::sim::DEFAULT_CLIENT_ID,
        stellantis_sync::sim::DEFAULT_CLIENT_SECRET
    ));
    assert!(!outputs.contains(&basic));
    for s in &secrets {
        for f in forms(s) {
            assert!(!outputs.contains(&f), "secret form `{f}` leaked");
        }
    }
    assert!(
        outputs.contains("TRACE") || outputs.contains("trace"),
        "the run really logged at trace level"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warns_ahead_of_the_refresh_tokens_absolute_age() {
    let opts = Opts {
        extra_top: "refresh_token_max_age = \"10m\"\nrefresh_token_warn_before = \"10m\"\n".into(),
        ..Opts::default()
    };
    let env = Env::new(sim_cfg(), |s| vec![Acct::bootstrapped(s, 1)], opts).await;
    assert_code(&env.once().await, 0);
    // Under systemd (JOURNAL_STREAM set) the line carries journald's warning priority, so
    // `journalctl -p warning` shows it (issue 26).
    let o = env.run(&["--once"], &[("JOURNAL_STREAM", "8:12345")]).await;
    assert_code(&o, 0);
    let out = text(&o);
    let line = out
        .lines()
        .find(|l| l.contains("Stellantis ends it after about"))
        .unwrap_or_else(|| panic!("no warning in {out}"));
    assert!(
        line.contains("run `stellantis-sync login --account user1` before then"),
        "{line}"
    );
    assert!(line.starts_with("<4>"), "journal priority warning: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_picks_up_a_login_without_a_restart() {
    let opts = Opts {
        schedule: "* * * * * *".into(),
        ..Opts::default()
    };
    let env = Env::new(
        sim_cfg(),
        |s| vec![Acct::bare(s, 1), Acct::bootstrapped(s, 2)],
        opts,
    )
    .await;
    let mut daemon = env.spawn_daemon(&[]);
    let runs = |name: &str, status: &str| {
        rusqlite::Connection::open(env.db_path())
            .and_then(|c| c.query_row("SELECT count(*) FROM sync_runs r JOIN accounts a USING (account_id) WHERE a.name = ?1 AND r.status = ?2", [name, status], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    wait_for(15, "user1 to need a login while user2 syncs", || {
        runs("user1", "failed") >= 1 && runs("user2", "ok") >= 1
    })
    .await;
    // Log in out of band (as `login --code` would after the browser step): get a code from the
    // simulated form, then hand it to the login command.
    let pending = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["login", "--account", "user1"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let url = text(&pending)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http"))
        .unwrap()
        .to_owned();
    let location = sign_in(&env.sim, &url, "user1@example.com", "password1").await;
    let done = env
        .run(&["login", "--account", "user1", "--code", &location], &[])
        .await;
    assert_code(&done, 0);
    wait_for(15, "the daemon to sync user1 with the new token", || {
        runs("user1", "ok") >= 1
    })
    .await;
    signal(&daemon, "TERM");
    assert!(daemon.wait().await.unwrap().success());
}

/// Issue 23, F2 of the adversarial review: a copied state directory (`cp -a`, `rsync`, a
/// restore from an archive) is told from the original, whose chain it would end: the copy
/// presents nothing and exits 78 naming `adopt-state`; the original syncs on. After a restore
/// (the original gone) `adopt-state` makes the copy the holder. On the old code the copy synced
/// (exit 0) and the original then exited 77: its chain had been revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_state_directory_presents_nothing_until_adopted() {
    let env = Env::new(
        SimConfig {
            family_revocation: true,
            ..SimConfig::default()
        },
        |s| vec![Acct::bootstrapped(s, 1)],
        Opts::default(),
    )
    .await;
    assert_code(&env.once().await, 0);
    let copy = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.state_dir())
        .arg(copy.path().join("state"))
        .status()
        .unwrap();
    assert!(ok.success());
    let copy_config = copy.path().join("config.toml");
    let accounts = vec![Acct::bootstrapped(&env.sim, 1)];
    std::fs::write(
        &copy_config,
        config_text(&env.sim, copy.path(), &accounts, &Opts::default()),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let config = copy_config.clone();
        async move {
            tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&config)
                .args(args)
                .env_remove("NOTIFY_SOCKET")
                .output()
                .await
                .unwrap()
        }
    };
    let o = run(&["--once"]).await;
    assert_code(&o, 78);
    assert!(
        text(&o).contains("copy or a restore") && text(&o).contains("adopt-state"),
        "{}",
        text(&o)
    );
    assert_eq!(env.sim.stats().reused_refresh, 0);
    assert_code(&env.once().await, 0);
    assert_eq!(
        env.sim.stats().reused_refresh,
        0,
        "the original's chain lives"
    );

    // A restore: the original is gone; the copy is adopted and carries the chain on.
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    let o = run(&["adopt-state"]).await;
    assert_code(&o, 0);
    assert!(
        text(&o).contains("now holds its token chains"),
        "{}",
        text(&o)
    );
    let o = run(&["--once"]).await;
    assert_code(&o, 0);
    assert_eq!(env.sim.stats().reused_refresh, 0);
    assert!(
        text(&run(&["adopt-state"]).await).contains("nothing to adopt"),
        "adopting twice changes nothing"
    );
    // A store from before the check (no tokens/.home) adopts itself on first use.
    std::fs::remove_file(copy.path().join("state/tokens/.home")).unwrap();
    assert_code(&run(&["--once"]).await, 0);
    assert!(copy.path().join("state/tokens/.home").exists());
}
