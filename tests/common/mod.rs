//! Shared test harness: a simulator on 127.0.0.1:0, a temporary state directory, a written
//! configuration, and the real binary (`CARGO_BIN_EXE_stellantis-sync`) run against them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use stellantis_sync::sim::{self, SimConfig, SimHandle};

pub const BIN: &str = env!("CARGO_BIN_EXE_stellantis-sync");

pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sim::spawn(listener, cfg).unwrap()
}

/// One `[[accounts]]` entry.
#[derive(Clone, Debug)]
pub struct Acct {
    pub name: String,
    pub brand: String,
    pub refresh_token: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Acct {
    /// An account bootstrapped from a refresh token the simulator issued for `user{n}`.
    pub fn bootstrapped(sim: &SimHandle, n: usize) -> Acct {
        let (email, _, brand) = sim.users()[n - 1].clone();
        Acct {
            name: format!("user{n}"),
            brand: brand.key().into(),
            refresh_token: sim.issue_refresh_token(&email),
            username: None,
            password: None,
        }
    }
    /// An account with only a username and password.
    pub fn with_password(sim: &SimHandle, n: usize) -> Acct {
        let (email, password, brand) = sim.users()[n - 1].clone();
        Acct {
            name: format!("user{n}"),
            brand: brand.key().into(),
            refresh_token: None,
            username: Some(email),
            password: Some(password),
        }
    }
    /// An account with no credential at all (needs `login`).
    pub fn bare(sim: &SimHandle, n: usize) -> Acct {
        let (_, _, brand) = sim.users()[n - 1].clone();
        Acct {
            name: format!("user{n}"),
            brand: brand.key().into(),
            refresh_token: None,
            username: None,
            password: None,
        }
    }
}

/// Knobs of the written configuration.
#[derive(Clone, Debug)]
pub struct Opts {
    pub schedule: String,
    pub rps: u32,
    pub burst: u32,
    pub idp_rps: u32,
    pub refresh_margin: String,
    pub max_retries: u32,
    pub max_concurrent: u32,
    pub extra_top: String,
    /// The body of `[telemetry]`; by default telemetry is off, so the list-pass tests count
    /// only their own requests (`""` = the shipped defaults, which poll).
    pub telemetry: String,
}

impl Opts {
    /// A daemon that runs only its start-up pass: the schedule is a year away.
    pub fn idle() -> Opts {
        Opts {
            schedule: "0 0 0 1 1 *".into(),
            ..Opts::default()
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            schedule: "*/2 * * * * *".into(),
            rps: 200,
            burst: 1,
            idp_rps: 200,
            refresh_margin: "5m".into(),
            max_retries: 2,
            max_concurrent: 4,
            extra_top: String::new(),
            telemetry: "enabled = false".into(),
        }
    }
}

/// A test environment: simulator, directory, configuration.
pub struct Env {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    pub async fn new(
        cfg: SimConfig,
        accounts: impl FnOnce(&SimHandle) -> Vec<Acct>,
        opts: Opts,
    ) -> Env {
        let sim = start_sim(cfg).await;
        let accts = accounts(&sim);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text(&sim, dir.path(), &accts, &opts)).unwrap();
        Env { sim, dir, config }
    }

    /// A datagram socket standing in for systemd's `NOTIFY_SOCKET`, and its path.
    pub fn notify_socket(&self) -> (std::os::unix::net::UnixDatagram, String) {
        let path = self.dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (sock, path.to_str().unwrap().to_owned())
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("state/stellantis-sync.sqlite")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn rewrite(&self, accounts: &[Acct], opts: &Opts) {
        std::fs::write(
            &self.config,
            config_text(&self.sim, self.dir.path(), accounts, opts),
        )
        .unwrap();
    }

    /// Runs the binary with these arguments (after `--config`), with `envs`.
    pub async fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("the binary ran for more than 2 minutes")
            .unwrap()
    }

    pub async fn once(&self) -> Output {
        self.run(&["--once"], &[]).await
    }

    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.db_path()).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Like [`Env::count`], but `None` while the database is still being created or migrated.
    pub fn try_count(&self, sql: &str) -> Option<i64> {
        if !self.db_path().exists() {
            return None;
        }
        self.db().query_row(sql, [], |r| r.get(0)).ok()
    }

    /// Spawns the daemon in the background.
    pub fn spawn_daemon(&self, envs: &[(&str, &str)]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("--config").arg(&self.config).arg("run");
        cmd.env("RUST_LOG", "info").env_remove("NOTIFY_SOCKET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    }
}

pub fn config_text(sim: &SimHandle, dir: &Path, accounts: &[Acct], o: &Opts) -> String {
    let mut t = format!(
        "state_dir = \"{}\"\nschedule = \"{}\"\nrefresh_margin = \"{}\"\nmax_concurrent_accounts = {}\nshutdown_timeout = \"2s\"\n{}\n\
         [rate_limit]\nrequests_per_second = {}\nburst = {}\n\
         [api]\nbase_url = \"{}\"\ntimeout = \"3s\"\nmax_retries = {}\nretry_base = \"50ms\"\nretry_cap = \"300ms\"\n\
         [idp]\nbase_url = \"{}\"\ntimeout = \"3s\"\nrequests_per_second = {}\nburst = 1\n\
         [telemetry]\n{}\n\
         [app]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        dir.join("state").display(),
        o.schedule,
        o.refresh_margin,
        o.max_concurrent,
        o.extra_top,
        o.rps,
        o.burst,
        sim.api_base(),
        o.max_retries,
        sim.base_url(),
        o.idp_rps,
        o.telemetry,
        sim::DEFAULT_CLIENT_ID,
        sim::DEFAULT_CLIENT_SECRET
    );
    for a in accounts {
        t.push_str(&format!(
            "\n[[accounts]]\nname = \"{}\"\nbrand = \"{}\"\n",
            a.name, a.brand
        ));
        if let Some(r) = &a.refresh_token {
            t.push_str(&format!("refresh_token = \"{r}\"\n"));
        }
        if let Some(u) = &a.username {
            t.push_str(&format!("username = \"{u}\"\n"));
        }
        if let Some(p) = &a.password {
            t.push_str(&format!("password = \"{p}\"\n"));
        }
    }
    t
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the exit code, printing the output if it differs.
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "output:\n{}", text(o));
}

/// Reads the stored refresh token of an account from the token store.
pub fn stored_refresh_token(state_dir: &Path, account: &str) -> Option<String> {
    let bytes = std::fs::read(state_dir.join(format!("tokens/{account}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["refresh_token"].as_str().map(str::to_owned)
}

pub fn stored_record(state_dir: &Path, account: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(state_dir.join(format!("tokens/{account}.json"))).unwrap(),
    )
    .unwrap()
}

/// Sends a signal to a child process.
pub fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("child is running");
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Sends SIGTERM to the daemon and waits (at most 10 s) for it to exit.
pub async fn stop_daemon(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the daemon did not exit within 10 s of SIGTERM")
        .unwrap()
}

/// Waits until `f` holds (polling every 100 ms) or panics after `secs`.
pub async fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs in on the simulated IdP's login form at an authorize URL, as a person would, and returns
/// the redirect the browser would then fail to open (`mymap://…?code=…&state=…`).
pub async fn sign_in(sim: &SimHandle, authorize_url: &str, user: &str, password: &str) -> String {
    let page = reqwest::get(authorize_url).await.unwrap();
    assert_eq!(page.status(), 200, "the login form");
    let parsed = url::Url::parse(authorize_url).unwrap();
    let mut form: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    form.push(("username".into(), user.into()));
    form.push(("password".into(), password.into()));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/am/oauth2/authorize", sim.base_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// A JSON column read back from SQLite (NULL stays `None`).
pub fn parse_json(v: Option<String>) -> Option<serde_json::Value> {
    v.map(|t| serde_json::from_str(&t).unwrap())
}

/// A fake HTTP server for adversarial tests: every request goes to `handler` (method, path and
/// query, headers, body) which returns (status, headers, body). Counts requests.
pub struct Fake {
    pub base: String,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

/// What a fake handler sees.
pub struct FakeRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

/// What a fake handler answers.
pub type FakeResponse = (u16, Vec<(&'static str, String)>, Vec<u8>);

impl Fake {
    pub async fn start<F, Fut>(handler: F) -> Fake
    where
        F: Fn(FakeRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = FakeResponse> + Send + 'static,
    {
        use axum::body::Body;
        use axum::response::IntoResponse;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = std::sync::Arc::new(handler);
        let h2 = hits.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let handler = handler.clone();
            let hits = h2.clone();
            async move {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap()
                    .to_vec();
                let r = FakeRequest {
                    method: parts.method.to_string(),
                    path_and_query: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    headers: parts.headers,
                    body,
                };
                let (status, headers, body) = handler(r).await;
                let mut resp = axum::response::Response::new(Body::from(body));
                *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    resp.headers_mut()
                        .insert(k, axum::http::HeaderValue::from_str(&v).unwrap());
                }
                resp.into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            base: format!("http://{addr}"),
            hits,
            _task: task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A JSON answer for a fake.
pub fn json_response(status: u16, v: &serde_json::Value) -> FakeResponse {
    (
        status,
        vec![("content-type", "application/hal+json".into())],
        v.to_string().into_bytes(),
    )
}

/// Replaces the `base_url` of the `[api]` (or `[idp]`) section in a written configuration.
pub fn point_section_at(config: &Path, section: &str, base: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut out = String::new();
    let mut in_section = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line.trim() == format!("[{section}]");
        }
        if in_section && line.starts_with("base_url") {
            out.push_str(&format!("base_url = \"{base}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(config, out).unwrap();
}

/// An identity provider in front of the simulator's: notifies `arrived` when a request comes in,
/// forwards it, applies `mangle` to the answer's (status, body), and holds it for `delay` (the
/// simulator has rotated the token by then).
pub async fn forwarding_idp<M>(
    sim_base: String,
    delay: Duration,
    arrived: std::sync::Arc<tokio::sync::Notify>,
    mangle: M,
) -> Fake
where
    M: Fn(u16, Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
{
    let mangle = std::sync::Arc::new(mangle);
    Fake::start(move |r| {
        let (sim_base, arrived, mangle) = (sim_base.clone(), arrived.clone(), mangle.clone());
        async move {
            arrived.notify_one();
            let mut req = reqwest::Client::new()
                .post(format!("{sim_base}{}", r.path_and_query))
                .body(r.body);
            for (k, v) in &r.headers {
                if k != "host" && k != "content-length" {
                    req = req.header(k, v);
                }
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = mangle(status, resp.bytes().await.unwrap().to_vec());
            tokio::time::sleep(delay).await;
            (
                status,
                vec![("content-type", "application/json".into())],
                body,
            )
        }
    })
    .await
}
