//! Issue 26: a new owner's first steps, run as the owner would against the simulator, for each
//! brand, with the brand preset's client (no client value in the configuration): `login` (the
//! printed steps, the pasted address checked for brand and country, the vehicles listed), and
//! `init` → `login` → `--once`.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use stellantis_sync::brand::Brand;
use stellantis_sync::sim::{SimConfig, SimHandle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Five users, one per brand (`user{n}` is `Brand::ALL[n-1]`), with 1, 2, 1, 1, 1 vehicles.
async fn five_brands() -> SimHandle {
    start_sim(SimConfig {
        users: 5,
        vehicle_counts: vec![1, 2, 1, 1, 1],
        ..SimConfig::default()
    })
    .await
}

/// Points a configuration written for real use at the simulator (the `[api]` and `[idp]` base
/// URLs only: the clients stay the presets), with telemetry off.
fn point_at_sim(config: &Path, sim: &SimHandle) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("client_")),
        "the configuration sets a client value:\n{text}"
    );
    let extra = format!(
        "\n[api]\nbase_url = \"{}\"\ntimeout = \"5s\"\n[idp]\nbase_url = \"{}\"\ntimeout = \"5s\"\n[telemetry]\nenabled = false\n",
        sim.api_base(),
        sim.base_url()
    );
    // Top-level tables must come before the [[accounts]] array: insert them ahead of it.
    let at = text.find("[[accounts]]").unwrap();
    std::fs::write(config, format!("{}{extra}\n{}", &text[..at], &text[at..])).unwrap();
}

/// Runs `login` for `account`, signs in on the simulated form as `user`, pastes what `paste`
/// makes of the redirect, and returns (exit code, stdout, stderr).
async fn login(
    sim: &SimHandle,
    config: &Path,
    account: &str,
    user: (&str, &str),
    paste: impl FnOnce(&str) -> String,
) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["login", "--account", account])
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let url = loop {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut l))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "login printed no URL:\n{printed}");
        printed.push_str(&l);
        if let Some(u) = l.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    let location = sign_in(sim, &url, user.0, user.1).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", paste(&location)).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).await.unwrap();
    printed.push_str(&rest);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    (status.code().unwrap_or(-1), printed, err)
}

/// A configuration with one account per brand and no client value, as an owner writes it.
fn owner_config(dir: &Path, sim: &SimHandle, country: &str) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    let mut text = format!("state_dir = \"{}\"\n", dir.join("state").display());
    for b in Brand::ALL {
        text.push_str(&format!(
            "\n[[accounts]]\nname = \"{b}\"\nbrand = \"{b}\"\ncountry = \"{country}\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    point_at_sim(&config, sim);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_each_brands_preset_client_lists_the_vehicles() {
    let sim = five_brands().await;
    let dir = tempfile::tempdir().unwrap();
    let config = owner_config(dir.path(), &sim, "de");
    let users = sim.users();
    for (i, b) in Brand::ALL.into_iter().enumerate() {
        let (email, password, brand) = &users[i];
        assert_eq!(*brand, b);
        // Half the brands paste the whole address, the others only the code.
        let (code, out, err) = login(&sim, &config, b.key(), (email, password), |loc| {
            if i % 2 == 0 {
                loc.to_owned()
            } else {
                let u = url::Url::parse(loc).unwrap();
                u.query_pairs()
                    .find(|(k, _)| k == "code")
                    .unwrap()
                    .1
                    .into_owned()
            }
        })
        .await;
        assert_eq!(code, 0, "{b}:\n{out}\n{err}");
        let redirect = b.app_redirect_uri("de");
        for needle in [
            format!("client_id={}", b.preset().client_id),
            format!("{redirect}?code="),
            "address bar".into(),
            "Network".into(),
            "few minutes".into(),
            "is logged in".into(),
        ] {
            assert!(out.contains(&needle), "{b}: `{needle}` missing in\n{out}");
        }
        let vehicles = if b == Brand::Citroen { 2 } else { 1 };
        assert!(
            out.contains(&format!("Vehicles of account `{b}` ({vehicles}):")),
            "{b}:\n{out}"
        );
        let vin_lines = out
            .lines()
            .filter(|l| l.trim_start().starts_with(b.vin_prefix()))
            .count();
        assert_eq!(vin_lines, vehicles, "{b}:\n{out}");
        assert!(!out.contains(b.preset().client_secret) && !err.contains(b.preset().client_secret));
    }
    assert_eq!(sim.stats().grants.get("authorization_code"), Some(&5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refuses_another_brands_or_countrys_address_and_says_which() {
    // user1 (Peugeot) has no vehicle.
    let sim = start_sim(SimConfig {
        users: 5,
        vehicle_counts: vec![0, 1, 1, 1, 1],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = owner_config(dir.path(), &sim, "fr");
    let (email, password, _) = sim.users()[0].clone();
    // A Peugeot sign-in, but the address pasted is the Opel app's.
    let (code, out, err) = login(&sim, &config, "peugeot", (&email, &password), |loc| {
        loc.replacen("mymap://", "mymopsdk://", 1)
    })
    .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("the Opel app's redirect") && err.contains("Peugeot account"),
        "{err}"
    );
    // A Peugeot sign-in pasted as if for Germany.
    let (code, out, err) = login(&sim, &config, "peugeot", (&email, &password), |loc| {
        loc.replacen("/oauth2redirect/fr", "/oauth2redirect/de", 1)
    })
    .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("country `de`") && err.contains("--country de"),
        "{err}"
    );
    // Neither was sent to the identity provider; the account still needs a login.
    assert_eq!(sim.stats().grants.get("authorization_code"), None);
    assert!(!dir.path().join("state/tokens/peugeot.json").exists());
    // The right address: logged in, and told the account has no vehicle yet.
    let (code, out, err) =
        login(&sim, &config, "peugeot", (&email, &password), str::to_owned).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("has no vehicle yet") && out.contains("MyPeugeot app"),
        "{out}"
    );
}

/// Runs the binary with `args` (and `--config config`), stdin closed; (exit code, stdout+stderr).
async fn run(config: &Path, args: &[&str]) -> (i32, String) {
    let o = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (o.status.code().unwrap_or(-1), text(&o))
}

/// The "Done when": `init`, `login` with the brand preset's client, and `--once`, as a
/// new owner runs them, for each brand, with no client value typed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_login_once_for_each_brand_with_no_client_value() {
    let sim = five_brands().await;
    let users = sim.users();
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in Brand::ALL.into_iter().enumerate() {
        let home = dir.path().join(b.key());
        let config = home.join("etc/stellantis-sync.toml");
        let state = home.join("state");
        let (code, out) = run(
            &config,
            &[
                "init",
                "--account",
                "car",
                "--brand",
                b.key(),
                "--country",
                "it",
                "--state-dir",
                state.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(code, 0, "{b}: {out}");
        let c = config.display().to_string();
        assert!(
            out.contains(&format!("stellantis-sync --config {c} login --account car"))
                && out.contains(&format!("stellantis-sync --config {c} --once")),
            "{b}: the next two commands:\n{out}"
        );
        let (code, out) = run(&config, &["check-config"]).await;
        assert_eq!(code, 0, "{b}: check-config on what init wrote: {out}");
        point_at_sim(&config, &sim);
        let (email, password, _) = &users[i];
        let (code, out, err) = login(&sim, &config, "car", (email, password), str::to_owned).await;
        assert_eq!(code, 0, "{b}:\n{out}\n{err}");
        assert!(out.contains(&b.app_redirect_uri("it")), "{b}:\n{out}");
        let (code, out) = run(&config, &["--once"]).await;
        assert_eq!(code, 0, "{b}: --once\n{out}");
        let db = rusqlite::Connection::open(state.join("stellantis-sync.sqlite")).unwrap();
        let vehicles: i64 = db
            .query_row("SELECT count(*) FROM vehicles", [], |r| r.get(0))
            .unwrap();
        assert_eq!(vehicles, if b == Brand::Citroen { 2 } else { 1 }, "{b}");
    }
    // Five code exchanges, each with its brand's preset client (`point_at_sim` checked that no
    // file set a client value; the simulator's own client was never configured).
    assert_eq!(sim.stats().grants.get("authorization_code"), Some(&5));
}

#[tokio::test]
async fn init_never_overwrites_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "# my own configuration\n").unwrap();
    let state = dir.path().join("state");
    let (code, out) = run(
        &config,
        &[
            "init",
            "--brand",
            "opel",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("already exists") && out.contains("left as it is"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# my own configuration\n"
    );
    // Nothing else was left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A login that works but whose account cannot be listed says exactly why: here the account is
/// configured as Peugeot with a client that signs in any brand's user (`[app]`), and a Citroën
/// owner signs in, so the API refuses the fresh token with the Peugeot realm (a gateway 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_says_why_the_vehicles_cannot_be_listed() {
    let sim = five_brands().await;
    let dir = tempfile::tempdir().unwrap();
    let config = owner_config(dir.path(), &sim, "fr");
    let text = std::fs::read_to_string(&config).unwrap();
    let at = text.find("[[accounts]]").unwrap();
    let app = format!(
        "[app]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\n",
        stellantis_sync::sim::DEFAULT_CLIENT_ID,
        stellantis_sync::sim::DEFAULT_CLIENT_SECRET
    );
    std::fs::write(&config, format!("{}{app}{}", &text[..at], &text[at..])).unwrap();
    let (email, password, brand) = sim.users()[1].clone();
    assert_eq!(brand, Brand::Citroen);
    let (code, out, err) =
        login(&sim, &config, "peugeot", (&email, &password), str::to_owned).await;
    // 78: the account's configuration (its brand) is refused, as `--once` would say.
    assert_eq!(code, 78, "{out}{err}");
    assert!(out.contains("is logged in"), "{out}");
    assert!(
        err.contains("gateway 401") && err.contains("clientsB2CPeugeot") && err.contains("`brand`"),
        "{err}"
    );
    assert!(err.contains("one configured in client_id"), "{err}");
}
