//! Vehicle telemetry: what the cars do, polled per vehicle from `/status`, `/trips`, `/alerts`
//! and `/maintenance` (never a wake-up, never `lastPosition`/`telemetry`/`collisions`), stored
//! as typed time series, charging sessions and state intervals.
//!
//! [`Telemetry`] is the runner the daemon uses: [`Telemetry::run_due`] polls what is due (per
//! vehicle and endpoint, from `schedule`, with the bookkeeping persisted in
//! `telemetry_endpoints`), at most `max_concurrent_vehicles` vehicles at a time, and writes an
//! account's finished vehicles as the round goes, one transaction per 16 vehicles or 2 s
//! (`store::telemetry`), so a crash loses at most the last few answers.
//! Within a round, no account may hold every vehicle permit while another has work, and until
//! every account's first poll of the round has finished, an account that finished is polled again
//! when its vehicles are due: a slow account (answers that take seconds) makes the round last,
//! not the other accounts' cars wait (issue 22: a charging car due every 5 s waited 49 s).
//! [`Telemetry::run_once_pass`] is the `--once` variant: a status poll of every current vehicle,
//! the rest when due. The daemon runs `run_due` as its `Job::TelemetryRound` (see `jobs`), one
//! round at a time. The vehicles are those the list pass recorded as current
//! (`vehicles.removed_at IS NULL`, with a VIN): one that leaves the list is no longer polled. A vehicle's failure never fails its account: 403/404 mark the endpoint unavailable
//! (backed off), other failures retry at the next interval; only a database write error is
//! reported as such.
//!
//! Submodules: `status` (the body → observation and hash), `derive` (observations → states and
//! charging sessions), `schedule` (due times, the budget), `records` (trips, alerts,
//! maintenance items), `config` (the `[telemetry]` section).

pub mod config;
pub mod derive;
pub mod records;
pub mod schedule;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::api::telemetry::TelemetryError;
use crate::auth::AuthError;
use crate::config::{Account, Config};
use crate::store::telemetry::{Batch, Book, PolledVehicle, StatusFetch};
use crate::store::{Db, DbError};
use crate::sync::Engine;
use config::Settings;
use derive::{Event, State};
use schedule::{Endpoint, Outcome};

/// The current Unix time in seconds (the one clock read of the runner, outside decisions).
pub fn now_ts() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySummary {
    /// Requests sent.
    pub requests: usize,
    pub statuses: usize,
    pub new_observations: usize,
    pub unchanged: usize,
    pub trips: usize,
    /// Endpoints newly or still unavailable (403/404) this round.
    pub unavailable: usize,
    /// Requests that failed for another reason (retried at the next interval).
    pub failures: usize,
    /// Requests not sent: a cooldown, or the day's request budget (due again at the interval).
    pub deferred: usize,
    /// A database write failed (exit 74 for `--once`).
    pub local_io: Option<String>,
    /// Charges and drives, as (account, vin, event), for the logs and the demo.
    pub events: Vec<(String, String, Event)>,
    /// The earliest next due time of any polled endpoint.
    pub next_due: Option<i64>,
}

impl TelemetrySummary {
    /// Adds another round's counts to this one.
    pub fn merge(&mut self, o: TelemetrySummary) {
        self.requests += o.requests;
        self.statuses += o.statuses;
        self.new_observations += o.new_observations;
        self.unchanged += o.unchanged;
        self.trips += o.trips;
        self.unavailable += o.unavailable;
        self.failures += o.failures;
        self.deferred += o.deferred;
        self.local_io = self.local_io.take().or(o.local_io);
        self.events.extend(o.events);
        self.next_due = match (self.next_due, o.next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// One line for the logs.
    pub fn line(&self) -> String {
        format!(
            "telemetry: {} requests, {} statuses ({} new, {} unchanged), {} trips, {} unavailable, {} failed, {} deferred",
            self.requests,
            self.statuses,
            self.new_observations,
            self.unchanged,
            self.trips,
            self.unavailable,
            self.failures,
            self.deferred
        )
    }
}

/// List-pass requests a day for `accounts` accounts at this cron schedule (one page each).
pub fn list_requests_per_day(schedule: &str, accounts: usize) -> f64 {
    let Ok(cron) = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
    else {
        return 0.0;
    };
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(); // 2026-01-01
    let end = start + chrono::Duration::days(1);
    let passes = cron
        .iter_after(start)
        .take_while(|t| *t <= end)
        .take(86_401)
        .count();
    passes as f64 * accounts as f64
}

/// The day's budget and the list passes' share of it, per app client id: what
/// [`crate::spend`] enforces on every API request.
pub fn budget_plan(cfg: &Config) -> crate::spend::Plan {
    let mut accounts_per_client: HashMap<String, usize> = HashMap::new();
    for a in &cfg.accounts {
        *accounts_per_client.entry(a.client_id.clone()).or_default() += 1;
    }
    crate::spend::Plan {
        budget: cfg.telemetry.daily_request_budget,
        list_per_day: accounts_per_client
            .into_iter()
            .map(|(c, n)| (c, list_requests_per_day(&cfg.schedule.cron, n)))
            .collect(),
    }
}

/// The projection `status` and `check-config` print, per app client id: (client id, projection).
pub fn projections(
    cfg: &Config,
    vehicles: &HashMap<String, usize>,
) -> Vec<(String, schedule::Projection)> {
    let mut by_client: HashMap<&str, (usize, usize)> = HashMap::new();
    for a in &cfg.accounts {
        let e = by_client.entry(a.client_id.as_str()).or_default();
        e.0 += 1;
        e.1 += vehicles.get(&a.name).copied().unwrap_or(0);
    }
    let mut out: Vec<_> = by_client
        .into_iter()
        .map(|(client, (accounts, n))| {
            let list = list_requests_per_day(&cfg.schedule.cron, accounts);
            let p = schedule::projection(
                &cfg.telemetry.intervals,
                cfg.telemetry.daily_request_budget,
                n,
                list,
            );
            (client.to_owned(), p)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The runner.
pub struct Telemetry {
    settings: Settings,
    engine: Arc<Engine>,
    accounts: Vec<Account>,
    /// List requests a day per client id.
    list_per_day: HashMap<String, f64>,
}

/// One vehicle's planned work.
struct Work {
    vehicle: PolledVehicle,
    due: Vec<Endpoint>,
    books: HashMap<Endpoint, Book>,
    state: Option<State>,
}

/// What one vehicle's requests produced.
#[derive(Default)]
struct VehicleResult {
    requests: usize,
    status: Option<StatusFetch>,
    trips: Option<Vec<records::Trip>>,
    alerts: Option<Vec<records::Alert>>,
    maintenance: Option<(i64, Option<i64>, Option<f64>)>,
    outcomes: Vec<(Endpoint, Outcome, Option<String>)>,
    new_bookmark: Option<String>,
}

impl Telemetry {
    /// The runner for a configuration, sharing the engine's API client, tokens and database.
    pub fn new(cfg: &Config, engine: Arc<Engine>) -> Telemetry {
        Telemetry {
            settings: cfg.telemetry.clone(),
            engine,
            accounts: cfg.accounts.clone(),
            list_per_day: budget_plan(cfg).list_per_day,
        }
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        crate::store::with_db(&self.engine.db, f).await
    }

    /// Polls every endpoint that is due at `now` (Unix seconds).
    pub async fn run_due(&self, now: i64, stop: CancellationToken) -> TelemetrySummary {
        self.run(now, stop, false).await
    }

    /// `--once`: one status poll of every current vehicle (but not of one whose status is
    /// resting after a 403/404), and trips, alerts and maintenance where their persisted
    /// bookkeeping says they are due.
    pub async fn run_once_pass(&self, now: i64, stop: CancellationToken) -> TelemetrySummary {
        self.run(now, stop, true).await
    }

    /// One account's vehicles, endpoint books and states, as the database has them.
    async fn load(&self, a: &Account) -> Result<Loaded, DbError> {
        let (name, brand) = (a.name.clone(), a.brand.key().to_owned());
        self.db(move |db| {
            let id = db.account_id(&name, &brand)?;
            let vehicles = db.telemetry_vehicles(id)?;
            let (books, states) = db.telemetry_books(id)?;
            Ok((id, vehicles, books, states))
        })
        .await
    }

    /// Starts one account's round at `now` (with its account permit, or waiting for one).
    #[allow(clippy::too_many_arguments)]
    fn spawn_account(
        &self,
        set: &mut tokio::task::JoinSet<(usize, TelemetrySummary)>,
        round: &Round,
        i: usize,
        account: &Account,
        account_id: i64,
        stretch: f64,
        now: i64,
        work: Vec<Work>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let this = TelemetryAccount {
            settings: self.settings.clone(),
            engine: self.engine.clone(),
            account: account.clone(),
            account_id,
            stretch,
        };
        let (accounts, vehicles, stop) = (
            round.accounts.clone(),
            round.vehicles.clone(),
            round.stop.clone(),
        );
        let own = Arc::new(Semaphore::new(round.per_account));
        set.spawn(async move {
            let permit = match permit {
                Some(p) => p,
                None => match tokio::select! {
                    p = accounts.acquire_owned() => p.ok(),
                    () = stop.cancelled() => None,
                } {
                    Some(p) => p,
                    None => return (i, TelemetrySummary::default()),
                },
            };
            let s = this.poll(now, work, vehicles, own, stop).await;
            drop(permit);
            (i, s)
        });
    }

    async fn run(&self, now: i64, stop: CancellationToken, all_status: bool) -> TelemetrySummary {
        let mut total = TelemetrySummary::default();
        if !self.settings.enabled {
            return total;
        }
        // Load every account's vehicles, books and states.
        let mut plans = Vec::new();
        for a in &self.accounts {
            match self.load(a).await {
                Ok(l) => plans.push((a.clone(), l)),
                Err(e) => {
                    tracing::error!(account = %a.name, "telemetry: cannot read the database: {e}");
                    total.local_io = Some(e.to_string());
                    return total;
                }
            }
        }
        // The budget: per client id, from the vehicles' current states.
        let mut mix: HashMap<String, (usize, usize)> = HashMap::new();
        for (a, (_, vehicles, _, states)) in &plans {
            let active: HashSet<&str> = states
                .iter()
                .filter(|(_, s)| s.is_active())
                .map(|(v, _)| v.as_str())
                .collect();
            let e = mix.entry(a.client_id.clone()).or_default();
            for v in vehicles {
                if active.contains(v.vin.as_str()) {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
        let stretch: HashMap<String, f64> = mix
            .into_iter()
            .map(|(c, (act, park))| {
                let list = self.list_per_day.get(&c).copied().unwrap_or(0.0);
                let k = schedule::stretch(
                    &self.settings.intervals,
                    self.settings.daily_request_budget,
                    list,
                    act,
                    park,
                );
                (c, k)
            })
            .collect();
        let max = self.settings.max_concurrent_vehicles.max(1);
        let round = Round {
            vehicles: Arc::new(Semaphore::new(max)),
            accounts: Arc::new(Semaphore::new(max)),
            // With several accounts, none may hold every vehicle permit: a slow account's
            // vehicles must not keep the others' waiting (issue 22 defect 10).
            per_account: if plans.len() > 1 {
                (max - 1).max(1)
            } else {
                max
            },
            stop: stop.clone(),
        };
        let mut set = tokio::task::JoinSet::new();
        let mut accounts = Vec::new();
        // Per account, the earliest due time of the endpoints its last plan did not poll.
        let mut unpolled_due: Vec<Option<i64>> = Vec::new();
        // Accounts due again before the round ends: (due time, account).
        let mut waiting: Vec<(i64, usize)> = Vec::new();
        // Accounts whose first poll of the round is still in flight.
        let mut first = HashSet::new();
        for (a, (account_id, vehicles, books, states)) in plans {
            let k = stretch.get(&a.client_id).copied().unwrap_or(1.0);
            let (work, next_due) = plan(
                vehicles,
                books,
                states,
                now,
                all_status,
                &self.settings.intervals,
            );
            total.next_due = earliest(total.next_due, next_due);
            let i = accounts.len();
            accounts.push((a, k));
            unpolled_due.push(next_due);
            if work.is_empty() {
                if let Some(d) = next_due.filter(|_| !all_status) {
                    waiting.push((d, i));
                }
                continue;
            }
            if stop.is_cancelled() {
                break;
            }
            // Accounts in flight are bounded like vehicles: with every account started at once,
            // the vehicle permits went round all accounts' first vehicles before any account's
            // second, so nearly every account held fetched bodies until its last vehicle came
            // (86 MiB at 10,000 vehicles; bench scenario 9).
            let account_permit = tokio::select! {
                p = round.accounts.clone().acquire_owned() => p,
                () = stop.cancelled() => break,
            };
            let Ok(account_permit) = account_permit else {
                break;
            };
            let (a, k) = &accounts[i];
            self.spawn_account(
                &mut set,
                &round,
                i,
                a,
                account_id,
                *k,
                now,
                work,
                Some(account_permit),
            );
            first.insert(i);
        }
        // Until every account's first poll of the round has finished, an account that finished
        // (or had nothing due) is polled again when its vehicles are due, at least a second
        // after it finished, on the round's own clock: the round waits for its slowest account,
        // the others do not. It still ends: nothing starts once every first poll is done, so the
        // budget's stretch and the vehicle list are planned afresh at every round. `--once`
        // polls each vehicle once.
        let started = std::time::Instant::now();
        let round_now =
            || now.saturating_add(i64::try_from(started.elapsed().as_secs()).unwrap_or(0));
        loop {
            if first.is_empty() || stop.is_cancelled() {
                waiting.clear();
            }
            let wake = waiting.iter().map(|(d, _)| *d).min();
            let finished = tokio::select! {
                r = set.join_next() => r,
                () = sleep_until_round_time(wake, now, started) => {
                    if stop.is_cancelled() {
                        continue;
                    }
                    let t = round_now();
                    let (ready, later) = waiting.into_iter().partition(|(d, _)| *d <= t);
                    waiting = later;
                    for (_, i) in ready {
                        let (a, k) = &accounts[i];
                        match self.load(a).await {
                            Ok((account_id, vehicles, books, states)) => {
                                let (work, next_due) =
                                    plan(vehicles, books, states, t, false, &self.settings.intervals);
                                unpolled_due[i] = next_due;
                                if work.is_empty() {
                                    waiting.extend(next_due.map(|d| (d.max(t + 1), i)));
                                } else {
                                    let (r, ai) = (&round, account_id);
                                    self.spawn_account(&mut set, r, i, a, ai, *k, t, work, None);
                                }
                            }
                            Err(e) => {
                                tracing::error!(account = %a.name, "telemetry: cannot read the database: {e}");
                                total.local_io = Some(e.to_string());
                            }
                        }
                    }
                    continue;
                }
            };
            let Some(r) = finished else { break };
            match r {
                Ok((i, s)) => {
                    first.remove(&i);
                    // Due again: the earliest of what it just polled and what it did not.
                    let due = earliest(unpolled_due[i], s.next_due);
                    if let Some(d) = due.filter(|_| s.local_io.is_none() && !all_status) {
                        waiting.push((d.max(round_now() + 1), i));
                    }
                    total.merge(s);
                }
                Err(e) => {
                    // Which account it was is unknown: start nothing more this round.
                    tracing::error!("a telemetry task failed: {e}");
                    first.clear();
                }
            }
        }
        for (account, vin, e) in &total.events {
            match e {
                Event::ChargeStarted { soc } => {
                    tracing::info!(account = %account, vin = %vin, soc = ?soc, "charge started");
                }
                Event::ChargeEnded {
                    reason,
                    start_soc,
                    end_soc,
                } => {
                    tracing::info!(account = %account, vin = %vin, reason = %reason, start_soc = ?start_soc, end_soc = ?end_soc, "charge ended");
                }
                Event::DriveEnded => tracing::info!(account = %account, vin = %vin, "drive ended"),
            }
        }
        if total.requests > 0 {
            tracing::debug!("{}", total.line());
        }
        total
    }
}

/// What [`Telemetry::load`] reads for one account: its id, vehicles, books and states.
type Loaded = (
    i64,
    Vec<PolledVehicle>,
    Vec<(String, Endpoint, Book)>,
    Vec<(String, State)>,
);

/// What the accounts of one round share.
struct Round {
    /// Vehicles in flight, all accounts together (`max_concurrent_vehicles`).
    vehicles: Arc<Semaphore>,
    /// Accounts in flight.
    accounts: Arc<Semaphore>,
    /// The most vehicles one account may have in flight.
    per_account: usize,
    stop: CancellationToken,
}

/// The earlier of two optional due times.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Sleeps until the round's clock (`now` at `started`, then counted by the monotonic clock)
/// reaches `at` (forever when `None`).
async fn sleep_until_round_time(at: Option<i64>, now: i64, started: std::time::Instant) {
    match at {
        Some(at) => {
            let secs = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
            tokio::time::sleep_until((started + Duration::from_secs(secs)).into()).await;
        }
        None => std::future::pending().await,
    }
}

/// One account's work at `now`: its vehicles with the endpoints due, and the earliest due time
/// of the endpoints not due. `all_status` (`--once`): every status is due, except one resting
/// after a 403/404.
fn plan(
    vehicles: Vec<PolledVehicle>,
    books: Vec<(String, Endpoint, Book)>,
    states: Vec<(String, State)>,
    now: i64,
    all_status: bool,
    intervals: &schedule::Intervals,
) -> (Vec<Work>, Option<i64>) {
    let mut by_vin: HashMap<String, HashMap<Endpoint, Book>> = HashMap::new();
    for (vin, ep, b) in books {
        by_vin.entry(vin).or_default().insert(ep, b);
    }
    let states: HashMap<String, State> = states.into_iter().collect();
    // The stored due time, unless the clock cannot explain it (a clock step).
    let due_at = |ep: Endpoint, b: Option<&Book>| {
        schedule::due_at(
            ep,
            b.and_then(|b| b.next_due_ts),
            b.and_then(|b| b.last_attempt_ts),
            now,
            intervals,
        )
    };
    let mut work = Vec::new();
    let mut next_due: Option<i64> = None;
    for v in vehicles {
        let books = by_vin.remove(&v.vin).unwrap_or_default();
        let due: Vec<Endpoint> = Endpoint::ALL
            .into_iter()
            .filter(|ep| {
                let b = books.get(ep);
                // `--once` polls every status, except one resting after a 403/404.
                let resting = b.is_some_and(|b| b.unavailable_since_ts.is_some());
                (all_status && *ep == Endpoint::Status && !resting) || due_at(*ep, b) <= now
            })
            .collect();
        for ep in Endpoint::ALL {
            if !due.contains(&ep) {
                next_due = earliest(next_due, Some(due_at(ep, books.get(&ep))));
            }
        }
        if !due.is_empty() {
            let state = states.get(&v.vin).copied();
            work.push(Work {
                vehicle: v,
                due,
                books,
                state,
            });
        }
    }
    (work, next_due)
}

/// One account's round.
struct TelemetryAccount {
    settings: Settings,
    engine: Arc<Engine>,
    account: Account,
    account_id: i64,
    stretch: f64,
}

/// Vehicles whose requests have finished and are not yet written; written every
/// [`Finished::EVERY`] vehicles or [`Finished::AFTER`] after the first of them finished.
#[derive(Default)]
struct Finished {
    results: Vec<(usize, VehicleResult)>,
    first: Option<std::time::Instant>,
}

impl Finished {
    const EVERY: usize = 16;
    const AFTER: Duration = Duration::from_secs(2);

    fn take(&mut self, r: Result<(usize, VehicleResult), tokio::task::JoinError>) {
        match r {
            Ok(done) => {
                self.first.get_or_insert_with(std::time::Instant::now);
                self.results.push(done);
            }
            Err(e) => tracing::error!("a vehicle's telemetry task failed: {e}"),
        }
    }

    fn due(&self) -> bool {
        self.results.len() >= Self::EVERY || self.first.is_some_and(|t| t.elapsed() >= Self::AFTER)
    }

    fn drain(&mut self) -> Vec<(usize, VehicleResult)> {
        self.first = None;
        std::mem::take(&mut self.results)
    }
}

impl TelemetryAccount {
    async fn poll(
        self,
        now: i64,
        work: Vec<Work>,
        sem: Arc<Semaphore>,
        own: Arc<Semaphore>,
        stop: CancellationToken,
    ) -> TelemetrySummary {
        let mut summary = TelemetrySummary::default();
        let token = match self.engine.tokens.access_token(&self.account).await {
            Ok(t) => t,
            Err(e) => {
                // The list pass reports the account's token problems; telemetry waits.
                tracing::debug!(account = %self.account.name, "telemetry skipped: {e}");
                summary.failures += work.len();
                return summary;
            }
        };
        let this = Arc::new(self);
        let token = Arc::new(tokio::sync::Mutex::new(token));
        let mut set = tokio::task::JoinSet::new();
        let mut plans = Vec::new();
        let mut done = Finished::default();
        for (i, w) in work.into_iter().enumerate() {
            // The account's own share first, then a permit of the round's.
            let permit = tokio::select! {
                p = async {
                    let own = own.clone().acquire_owned().await?;
                    let shared = sem.clone().acquire_owned().await?;
                    Ok::<_, tokio::sync::AcquireError>((own, shared))
                } => p,
                () = stop.cancelled() => break,
            };
            let Ok(permit) = permit else { break };
            let (task, token) = (this.clone(), token.clone());
            let (vehicle, due, bookmark) = (
                w.vehicle.clone(),
                w.due.clone(),
                w.books
                    .get(&Endpoint::Trips)
                    .and_then(|b| b.bookmark.clone()),
            );
            set.spawn(async move {
                let r = task.vehicle(now, &vehicle, &due, bookmark, &token).await;
                drop(permit);
                (i, r)
            });
            plans.push(w);
            // What has finished meanwhile is written as the round goes on, so a crash loses at
            // most the last few vehicles' answers, not a large account's whole round.
            while let Some(r) = set.try_join_next() {
                done.take(r);
            }
            if done.due() {
                this.write(&plans, done.drain(), now, &mut summary).await;
            }
        }
        while let Some(r) = set.join_next().await {
            done.take(r);
            if done.due() {
                this.write(&plans, done.drain(), now, &mut summary).await;
            }
        }
        this.write(&plans, done.drain(), now, &mut summary).await;
        summary
    }

    /// Records finished vehicles' results in one transaction: their observations, trips, alerts,
    /// maintenance and the poller's bookkeeping.
    async fn write(
        &self,
        plans: &[Work],
        results: Vec<(usize, VehicleResult)>,
        now: i64,
        summary: &mut TelemetrySummary,
    ) {
        if results.is_empty() {
            return;
        }
        let mut batch = Batch::default();
        for (i, r) in results {
            if let Some(w) = plans.get(i) {
                self.add_result(&mut batch, summary, w, r, now);
            }
        }
        summary.statuses += batch.statuses.len();
        let account_id = self.account_id;
        let gap = self.settings.gap_limit;
        let written = crate::store::with_db(&self.engine.db, move |db| {
            db.write_telemetry(account_id, &batch, gap)
        })
        .await;
        match written {
            Ok(recorded) => {
                for r in recorded {
                    if r.new_observation {
                        summary.new_observations += 1;
                    } else {
                        summary.unchanged += 1;
                    }
                    for e in r.events {
                        summary
                            .events
                            .push((self.account.name.clone(), r.vin.clone(), e));
                    }
                }
            }
            Err(e) => {
                tracing::error!(account = %self.account.name, "telemetry: cannot record: {e}");
                summary.local_io = Some(e.to_string());
            }
        }
    }

    /// Adds one vehicle's result to `batch`: what it fetched and its endpoints' next due times.
    fn add_result(
        &self,
        batch: &mut Batch,
        summary: &mut TelemetrySummary,
        w: &Work,
        r: VehicleResult,
        now: i64,
    ) {
        let iv = self.settings.intervals;
        let vin = w.vehicle.vin.clone();
        // A deferred request was counted when tried but never sent.
        let deferred = r
            .outcomes
            .iter()
            .filter(|(_, o, _)| *o == Outcome::Deferred)
            .count();
        summary.requests += r.requests.saturating_sub(deferred);
        // The state after this round: the new observation's, else the stored one.
        let prev = w.state;
        let state = r
            .status
            .as_ref()
            .map(|f| {
                let o = &f.parsed.observation;
                derive_state(o)
            })
            .or(prev);
        let drive_ended =
            prev == Some(State::Driving) && state.is_some_and(|s| s != State::Driving);
        // A car that reported within the last minutes is awake (it just parked, and may be
        // plugged in next): it keeps the short interval.
        let awake = r
            .status
            .as_ref()
            .and_then(|f| f.parsed.observation.observed_ts)
            .is_some_and(|t| (0..schedule::AWAKE_SECS).contains(&(now - t)));
        let active = awake || state.is_some_and(State::is_active);
        let mut books = w.books.clone();
        for (ep, outcome, reason) in &r.outcomes {
            let b = books.entry(*ep).or_default();
            b.last_attempt_ts = Some(now);
            match outcome {
                Outcome::Ok => {
                    b.last_success_ts = Some(now);
                    b.unavailable_since_ts = None;
                    b.unavailable_reason = None;
                    b.consecutive_failures = 0;
                }
                Outcome::Unavailable => {
                    b.unavailable_since_ts = b.unavailable_since_ts.or(Some(now));
                    b.unavailable_reason = reason.clone();
                    summary.unavailable += 1;
                }
                Outcome::Failed => {
                    b.consecutive_failures += 1;
                    summary.failures += 1;
                }
                Outcome::Deferred => summary.deferred += 1,
            }
            b.next_due_ts = Some(schedule::next_due(
                *ep,
                *outcome,
                now,
                active,
                &iv,
                self.stretch,
            ));
            if *ep == Endpoint::Trips && r.new_bookmark.is_some() {
                b.bookmark = r.new_bookmark.clone();
            }
        }
        if drive_ended {
            // The trip is worth fetching now (next round), not at the safety interval.
            let b = books.entry(Endpoint::Trips).or_default();
            if b.unavailable_since_ts.is_none() {
                b.next_due_ts = Some(now);
            }
        }
        // A state change to active brings the next status poll forward.
        if let Some(b) = books.get_mut(&Endpoint::Status)
            && let Some(d) = b.next_due_ts
            && b.unavailable_since_ts.is_none()
        {
            b.next_due_ts = Some(schedule::status_due_after_change(
                d,
                now,
                active,
                &iv,
                self.stretch,
            ));
        }
        for (ep, b) in books {
            if w.books.get(&ep) != Some(&b) {
                if let Some(d) = b.next_due_ts {
                    summary.next_due = Some(summary.next_due.map_or(d, |n| n.min(d)));
                }
                batch.books.push((vin.clone(), ep, b));
            }
        }
        if let Some(f) = r.status {
            batch.statuses.push(f);
        }
        if let Some(t) = r.trips {
            summary.trips += t.len();
            batch.trips.push((vin.clone(), t));
        }
        if let Some(a) = r.alerts {
            batch.alerts.push((vin.clone(), a));
        }
        if let Some((ts, d, km)) = r.maintenance {
            batch.maintenance.push((vin.clone(), ts, d, km));
        }
    }

    /// A request with the account's token; one refresh and retry after a 401.
    async fn with_token<T, F, Fut>(
        &self,
        token: &tokio::sync::Mutex<SecretString>,
        mut f: F,
    ) -> Result<T, TelemetryError>
    where
        F: FnMut(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, TelemetryError>>,
    {
        let current = token.lock().await.clone();
        match f(current.clone()).await {
            Err(TelemetryError::Api(ApiError::Unauthorized(m))) => {
                tracing::info!(account = %self.account.name, "telemetry: access token refused ({m}); refreshing once");
                let fresh = self
                    .engine
                    .tokens
                    .after_rejection(&self.account, &current)
                    .await
                    .map_err(|e: AuthError| {
                        TelemetryError::Api(ApiError::Unauthorized(e.to_string()))
                    })?;
                *token.lock().await = fresh.clone();
                f(fresh).await
            }
            other => other,
        }
    }

    fn outcome(
        &self,
        vin: &str,
        ep: Endpoint,
        e: &TelemetryError,
    ) -> (Endpoint, Outcome, Option<String>) {
        match e {
            TelemetryError::Unavailable { .. } => {
                tracing::info!(account = %self.account.name, vin, endpoint = ep.as_str(), "{e}; backing off");
                (
                    ep,
                    Outcome::Unavailable,
                    Some(e.to_string().chars().take(200).collect()),
                )
            }
            TelemetryError::Api(api) => {
                if let ApiError::RateLimited { retry_after, .. } = api {
                    self.engine
                        .api
                        .limits()
                        .cooldown(retry_after.unwrap_or(Duration::from_secs(60)));
                }
                if matches!(api, ApiError::CoolingDown(_)) {
                    // Nothing was sent: a server-asked cooldown, or the day's budget.
                    tracing::debug!(account = %self.account.name, vin, endpoint = ep.as_str(), "telemetry waits: {e}");
                    return (ep, Outcome::Deferred, None);
                }
                tracing::warn!(account = %self.account.name, vin, endpoint = ep.as_str(), kind = %e.kind(), "telemetry request failed: {e}");
                (ep, Outcome::Failed, None)
            }
        }
    }

    /// Counts and logs the values of one body or item that were outside their physical range
    /// (their typed columns are NULL; the raw body is stored as it came).
    fn out_of_range(&self, vin: &str, endpoint: &str, item: Option<&str>, columns: &[&str]) {
        if columns.is_empty() {
            return;
        }
        tracing::warn!(
            account = %self.account.name,
            vin,
            endpoint,
            item,
            columns = %columns.join(","),
            "values outside their physical range stored as NULL (docs/schema.md, Bounds)"
        );
        if let Some(m) = self.engine.api.metrics() {
            for c in columns {
                m.out_of_range(endpoint, c);
            }
        }
    }

    async fn vehicle(
        &self,
        now: i64,
        v: &PolledVehicle,
        due: &[Endpoint],
        bookmark: Option<String>,
        token: &tokio::sync::Mutex<SecretString>,
    ) -> VehicleResult {
        let api = &self.engine.api;
        let a = &self.account;
        let mut r = VehicleResult::default();
        for ep in due {
            match ep {
                Endpoint::Status => {
                    r.requests += 1;
                    let got = self
                        .with_token(token, |t| async move {
                            api.get_status(a, &v.vehicle_id, &t).await
                        })
                        .await;
                    match got.and_then(|body| {
                        let parsed = status::parse(&body)
                            .map_err(|e| TelemetryError::Api(ApiError::Malformed(e.to_string())))?;
                        Ok((body, parsed))
                    }) {
                        Ok((body, parsed)) => {
                            self.out_of_range(&v.vin, "status", None, &parsed.out_of_range);
                            r.status = Some(StatusFetch {
                                vin: v.vin.clone(),
                                fetched_ts: now,
                                body: String::from_utf8_lossy(&body).into_owned(),
                                parsed,
                            });
                            r.outcomes.push((*ep, Outcome::Ok, None));
                        }
                        Err(e) => r.outcomes.push(self.outcome(&v.vin, *ep, &e)),
                    }
                }
                Endpoint::Trips => {
                    let since = trips_since(bookmark.as_deref(), now);
                    let mut url = api.trips_url(a, &v.vehicle_id, since.as_deref());
                    let mut trips = Vec::new();
                    let mut failed = None;
                    for _page in 0..50 {
                        r.requests += 1;
                        let u = url.clone();
                        match self
                            .with_token(token, |t| {
                                let u = u.clone();
                                async move { api.get_trips_page(a, &u, &t).await }
                            })
                            .await
                        {
                            Ok(page) => {
                                for t in page.items.iter().filter_map(records::trip) {
                                    self.out_of_range(
                                        &v.vin,
                                        "trips",
                                        Some(&t.trip_id),
                                        &t.out_of_range,
                                    );
                                    trips.push(t);
                                }
                                match page.next.map(|n| api.telemetry_next_url(a, &n)) {
                                    Some(Ok(n)) => url = n,
                                    Some(Err(e)) => {
                                        failed = Some(e);
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    match failed {
                        None => {
                            r.new_bookmark = trips_bookmark(&trips, now).or(bookmark.clone());
                            r.trips = Some(trips);
                            r.outcomes.push((*ep, Outcome::Ok, None));
                        }
                        Some(e) => {
                            // Pages already read are kept; the bookmark stays, so they are read again.
                            r.trips = Some(trips);
                            r.outcomes.push(self.outcome(&v.vin, *ep, &e));
                        }
                    }
                }
                Endpoint::Alerts => {
                    let mut url = api.alerts_url(a, &v.vehicle_id);
                    let mut alerts = Vec::new();
                    let mut failed = None;
                    for _page in 0..20 {
                        r.requests += 1;
                        let u = url.clone();
                        match self
                            .with_token(token, |t| {
                                let u = u.clone();
                                async move { api.get_alerts_page(a, &u, &t).await }
                            })
                            .await
                        {
                            Ok(page) => {
                                alerts.extend(page.items.iter().filter_map(records::alert));
                                match page.next.map(|n| api.telemetry_next_url(a, &n)) {
                                    Some(Ok(n)) => url = n,
                                    Some(Err(e)) => {
                                        failed = Some(e);
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    r.alerts = Some(alerts);
                    match failed {
                        None => r.outcomes.push((*ep, Outcome::Ok, None)),
                        Some(e) => r.outcomes.push(self.outcome(&v.vin, *ep, &e)),
                    }
                }
                Endpoint::Maintenance => {
                    r.requests += 1;
                    match self
                        .with_token(token, |t| async move {
                            api.get_maintenance(a, &v.vehicle_id, &t).await
                        })
                        .await
                    {
                        Ok(m) => {
                            let (days, km) = records::maintenance(&m);
                            let ts = ["updatedAt", "createdAt"]
                                .iter()
                                .find_map(|k| {
                                    m.get(k)
                                        .and_then(serde_json::Value::as_str)
                                        .and_then(status::ts)
                                })
                                .unwrap_or(now);
                            r.maintenance = Some((ts, days, km));
                            r.outcomes.push((*ep, Outcome::Ok, None));
                        }
                        Err(e) => r.outcomes.push(self.outcome(&v.vin, *ep, &e)),
                    }
                }
            }
        }
        r
    }
}

/// The state an observation shows (what derive opens for it).
fn derive_state(o: &status::Observation) -> State {
    derive::Sample {
        moving: o.moving,
        charging_status: o.charging_status.clone(),
        ignition: o.ignition.clone(),
        ..derive::Sample::default()
    }
    .state()
}

/// How far back every `/trips` query reaches, whatever the bookmark: a trip the server publishes
/// late (after later ones) is still fetched if it started within this window (the upsert makes
/// the trips read again a no-op).
const TRIPS_LOOKBACK_S: i64 = 3 * 86_400;

/// A trip that starts later than this after now is a wrong clock, not a trip: it never moves
/// the bookmark.
const TRIPS_FUTURE_SKEW_S: i64 = 600;

/// The next `/trips` bookmark: just after the newest finished trip's start, but no later than
/// the start of a trip still in progress (so its final form is fetched too). Trips dated more
/// than [`TRIPS_FUTURE_SKEW_S`] ahead of `now` are left out.
fn trips_bookmark(trips: &[records::Trip], now: i64) -> Option<String> {
    let plausible = || {
        trips
            .iter()
            .filter(move |t| t.started_ts <= now + TRIPS_FUTURE_SKEW_S)
    };
    let done_max = plausible()
        .filter(|t| t.done != Some(false))
        .map(|t| t.started_ts + 1)
        .max();
    let open_min = plausible()
        .filter(|t| t.done == Some(false))
        .map(|t| t.started_ts)
        .min();
    let b = match (done_max, open_min) {
        (Some(d), Some(o)) => d.min(o),
        (d, o) => d.or(o)?,
    };
    rfc3339(b)
}

/// The start of a `/trips` query: the bookmark, but never later than [`TRIPS_LOOKBACK_S`]
/// before `now` (so a late trip is fetched, and a bookmark a wrong clock put in the future stops
/// nothing); `None` (every trip) without a bookmark.
fn trips_since(bookmark: Option<&str>, now: i64) -> Option<String> {
    let floor = now - TRIPS_LOOKBACK_S;
    rfc3339(status::ts(bookmark?).map_or(floor, |b| b.min(floor)))
}

fn rfc3339(ts: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(ts, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// `--once` after the list pass: one telemetry round ([`Telemetry::run_once_pass`]); returns
/// the exit code, which telemetry changes only when the database could not be written (74,
/// unless the list pass already asks for re-authorization, 77).
pub async fn after_once(cfg: &Config, engine: Arc<Engine>, list_code: u8) -> u8 {
    after_once_until(cfg, engine, list_code, CancellationToken::new()).await
}

/// [`after_once`] that stops starting vehicles when `stop` fires (a signal to `--once`).
pub async fn after_once_until(
    cfg: &Config,
    engine: Arc<Engine>,
    list_code: u8,
    stop: CancellationToken,
) -> u8 {
    if !cfg.telemetry.enabled {
        return list_code;
    }
    let s = Telemetry::new(cfg, engine)
        .run_once_pass(now_ts(), stop)
        .await;
    tracing::info!("{}", s.line());
    once_exit_code(list_code, &s)
}

/// The `--once` exit code with the telemetry round's result.
pub fn once_exit_code(list_code: u8, s: &TelemetrySummary) -> u8 {
    if s.local_io.is_some() && list_code != crate::exit::NOPERM {
        crate::exit::IOERR
    } else {
        list_code
    }
}

/// The projection lines `check-config` prints: with the vehicles the database knows (if it
/// exists), per app client id.
pub fn projection_lines(cfg: &Config) -> String {
    use std::fmt::Write as _;
    if !cfg.telemetry.enabled {
        return "telemetry: disabled (only the vehicle list is polled)\n".into();
    }
    let conn = cfg
        .database
        .exists()
        .then(|| crate::store::open_read_only(&cfg.database).ok())
        .flatten();
    let mut counts = HashMap::new();
    for a in &cfg.accounts {
        let n = conn
            .as_ref()
            .and_then(|c| crate::store::telemetry::vehicle_summaries(c, &a.name).ok())
            .map_or(0, |v| v.len());
        counts.insert(a.name.clone(), n);
    }
    let mut out = String::new();
    for (client, p) in projections(cfg, &counts) {
        let _ = writeln!(out, "{p} [{client}]");
    }
    out
}

/// The `status` lines: per vehicle SoC, data age and unavailable endpoints, and the projection.
pub fn status_lines(conn: &rusqlite::Connection, cfg: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if !cfg.telemetry.enabled {
        let _ = writeln!(out, "\ntelemetry: disabled ([telemetry] enabled = false)");
        return out;
    }
    let now = now_ts();
    let _ = writeln!(
        out,
        "\n{:<16} {:<17} {:>6} {:>10} {:>10}  UNAVAILABLE",
        "ACCOUNT", "VIN", "SOC", "DATA AGE", "FETCHED"
    );
    let mut counts = HashMap::new();
    let age = |t: Option<i64>| match t {
        None => "-".to_owned(),
        Some(t) => {
            let d = (now - t).max(0);
            if d >= 2 * 86_400 {
                format!("{}d", d / 86_400)
            } else if d >= 3600 {
                format!("{}h", d / 3600)
            } else {
                format!("{}m", d / 60)
            }
        }
    };
    for a in &cfg.accounts {
        let rows = crate::store::telemetry::vehicle_summaries(conn, &a.name).unwrap_or_default();
        counts.insert(a.name.clone(), rows.len());
        for (vin, soc, observed, fetched, unavailable) in rows {
            let soc = soc.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}%"));
            let un = if unavailable.is_empty() {
                "-".to_owned()
            } else {
                crate::redact::printable(&unavailable.join(","))
            };
            let _ = writeln!(
                out,
                "{:<16} {:<17} {:>6} {:>10} {:>10}  {un}",
                a.name,
                crate::redact::printable(&vin),
                soc,
                age(observed),
                age(fetched)
            );
        }
    }
    for (client, p) in projections(cfg, &counts) {
        let _ = writeln!(out, "{p} [{client}]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_follow_the_cron_schedule() {
        assert_eq!(list_requests_per_day("0 */5 * * * *", 1), 288.0);
        assert_eq!(list_requests_per_day("0 */5 * * * *", 3), 864.0);
        assert_eq!(list_requests_per_day("0 0 * * * *", 2), 48.0);
        assert_eq!(list_requests_per_day("not cron", 2), 0.0);
    }

    #[test]
    fn the_trips_bookmark() {
        let t = |start: i64, done: Option<bool>| records::Trip {
            trip_id: start.to_string(),
            started_ts: start,
            done,
            ..records::Trip::default()
        };
        let now = 1_767_225_600 + 3600;
        assert_eq!(trips_bookmark(&[], now), None);
        // 2026-01-01T00:00:00Z = 1767225600
        assert_eq!(
            trips_bookmark(&[t(1_767_225_600, Some(true))], now).as_deref(),
            Some("2026-01-01T00:00:01Z")
        );
        assert_eq!(
            trips_bookmark(
                &[t(1_767_225_600, Some(true)), t(1_767_225_700, Some(false))],
                now
            )
            .as_deref(),
            Some("2026-01-01T00:00:01Z")
        );
        assert_eq!(
            trips_bookmark(&[t(1_767_225_700, Some(false))], now).as_deref(),
            Some("2026-01-01T00:01:40Z")
        );
        // A trip dated 2099 does not move it.
        assert_eq!(
            trips_bookmark(
                &[t(1_767_225_600, Some(true)), t(4_070_908_800, Some(true))],
                now
            )
            .as_deref(),
            Some("2026-01-01T00:00:01Z")
        );
        assert_eq!(trips_bookmark(&[t(4_070_908_800, Some(true))], now), None);
        // The query reaches back three days, whatever the bookmark says.
        assert_eq!(trips_since(None, now), None);
        for b in ["2099-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "garbage"] {
            assert_eq!(
                trips_since(Some(b), now).as_deref(),
                Some("2025-12-29T01:00:00Z"),
                "{b}"
            );
        }
        assert_eq!(
            trips_since(Some("2025-12-01T00:00:00Z"), now).as_deref(),
            Some("2025-12-01T00:00:00Z")
        );
    }
}
