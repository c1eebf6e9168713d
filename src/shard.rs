//! Shards: which instance serves which account under `--shard I/N`.
//!
//! An account's shard is `jump(key(name), N)`:
//! - [`key`] is the 64-bit FNV-1a hash of the account name's UTF-8 bytes (offset basis
//!   `0xcbf29ce484222325`, prime `0x100000001b3`). It is part of the on-disk contract: an
//!   account's history lives in its shard's database, so this function must never change.
//! - [`jump`] is the jump consistent hash of Lamping and Veach ("A Fast, Minimal Memory,
//!   Consistent Hash Algorithm", 2014, arXiv:1406.2294). Going from N to N+1 shards moves only
//!   the accounts that land on the new shard N (about 1/(N+1) of them); every other account
//!   keeps its shard, so its history stays in one database. Moving the few that change is
//!   `export-account` / `import-account` (see `src/transfer.rs`).
//!
//! A state directory remembers the shard its last `--shard` run served (`state_dir/shard`,
//! `I/N`): `import-account` without `--shard` checks an account against it, so a file imported
//! into the wrong instance's directory is refused instead of sitting there unused. An instance
//! reports the accounts its state directory holds (a token record, or history in its database)
//! that do not belong to its shard, with the commands that move them ([`misplaced`]): after N
//! changed, the old instance must say what it still holds.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The stable 64-bit key of an account name: FNV-1a 64 over its UTF-8 bytes.
pub fn key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash: the bucket in `0..n` of `key` (`n` = 0 is treated as 1).
pub fn jump(mut key: u64, n: u32) -> u32 {
    let n = i64::from(n.max(1));
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // As in the paper: (b + 1) * (2^31 / ((key >> 33) + 1)) in double precision.
        let step = f64::from(1u32 << 31) / ((key >> 33) as f64 + 1.0);
        j = ((b + 1) as f64 * step) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// The shard (0-based) of the account `name` among `n`.
pub fn shard_of(name: &str, n: u32) -> u32 {
    jump(key(name), n)
}

/// Keeps only the accounts of shard `i` of `n` in `cfg`, and gives the instance its share of
/// what the shards have in common: the quotas of the app client ids they share (the request rate
/// and the daily telemetry budget, divided by `n`, at least 1) and the backup directory (a
/// subdirectory `shard-I` of it, so that instances sharing `[backup] dir` neither overwrite nor
/// rotate away each other's copies).
pub fn keep(cfg: &mut Config, i: u32, n: u32) {
    cfg.accounts.retain(|a| shard_of(&a.name, n) == i);
    let share = |v: u32| std::num::NonZeroU32::new(v / n).unwrap_or(std::num::NonZeroU32::MIN);
    cfg.api.rate.per_second = share(cfg.api.rate.per_second.get());
    cfg.api.rate.burst = share(cfg.api.rate.burst.get());
    cfg.telemetry.daily_request_budget = (cfg.telemetry.daily_request_budget / u64::from(n)).max(1);
    cfg.ops.backup_dir = cfg.ops.backup_dir.join(format!("shard-{i}"));
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("shard")
}

/// Records that this state directory serves shard `i` of `n` (written by `run` and `--once`
/// with `--shard`; a failure is logged, never fatal).
pub fn record(state_dir: &Path, i: u32, n: u32) {
    if recorded(state_dir) == Some((i, n)) {
        return;
    }
    let text = format!("{i}/{n}\n");
    let written = std::fs::create_dir_all(state_dir).and_then(|()| {
        crate::fsutil::write_atomic(&record_path(state_dir), text.as_bytes(), 0o644, true)
    });
    if let Err(e) = written {
        tracing::warn!(
            "cannot record the shard in {}: {e}",
            record_path(state_dir).display()
        );
    }
}

/// The shard this state directory's last `--shard` run served, if it recorded one.
pub fn recorded(state_dir: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(record_path(state_dir)).ok()?;
    let (i, n) = text.trim().split_once('/')?;
    let (i, n): (u32, u32) = (i.parse().ok()?, n.parse().ok()?);
    (i < n).then_some((i, n))
}

/// An account held by a state directory that belongs to another shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    pub name: String,
    /// The shard it belongs to.
    pub belongs: u32,
    /// It has a token record here (else only history in the database).
    pub token: bool,
}

/// The accounts `cfg`'s state directory and database hold (a token record, or at least one run
/// in the database) that do not belong to shard `i` of `n`.
pub fn misplaced(cfg: &Config, i: u32, n: u32) -> Vec<Misplaced> {
    let mut names: std::collections::BTreeMap<String, bool> = std::collections::BTreeMap::new();
    let store = crate::auth::store::TokenStore::new(&cfg.state_dir);
    if let Ok(rd) = std::fs::read_dir(store.dir()) {
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".json")
                && crate::config::valid_name(name)
                && e.file_type().is_ok_and(|t| t.is_file())
            {
                names.insert(name.to_owned(), true);
            }
        }
    }
    if cfg.database.exists()
        && let Ok(conn) = crate::store::open_read_only(&cfg.database)
        && let Ok(mut st) = conn.prepare(
            "SELECT name FROM accounts a WHERE EXISTS (SELECT 1 FROM sync_runs r WHERE r.account_id = a.account_id)",
        )
        && let Ok(rows) = st.query_map([], |r| r.get::<_, String>(0))
    {
        for name in rows.flatten() {
            names.entry(name).or_insert(false);
        }
    }
    names
        .into_iter()
        .filter_map(|(name, token)| {
            let belongs = shard_of(&name, n);
            (belongs != i).then_some(Misplaced {
                name,
                belongs,
                token,
            })
        })
        .collect()
}

/// One line per misplaced account: what it is and the two commands that move it.
pub fn misplaced_lines(found: &[Misplaced], i: u32, n: u32) -> Vec<String> {
    found
        .iter()
        .map(|m| {
            format!(
                "account `{}` is held here ({}) but belongs to shard {}/{n}, not {i}/{n}: nothing syncs it{}. With both instances stopped, move it: here `stellantis-sync --shard {i}/{n} export-account {} --to FILE --remove{}`, then with shard {}'s state directory and database `stellantis-sync --shard {}/{n} import-account FILE{}` (docs/fleet.md)",
                m.name,
                if m.token { "a token record" } else { "history only" },
                m.belongs,
                if m.token { " and its refresh-token chain ages toward its end" } else { "" },
                m.name,
                if m.token { " --with-tokens" } else { "" },
                m.belongs,
                m.belongs,
                if m.token { " --with-tokens" } else { "" },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values, computed independently with a few lines of Python (FNV-1a 64 and the
    /// paper's C++ loop transcribed, with Python floats as C doubles), so the split can never
    /// change silently between versions: an account must stay in its instance's database.
    #[test]
    fn a_shard_gets_its_share_of_the_quota_and_its_own_backup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut t = format!(
            "state_dir = \"{}\"\n[app]\nclient_id = \"c\"\nclient_secret = \"s\"\n[rate_limit]\nrequests_per_second = 100\nburst = 10\n[telemetry]\ndaily_request_budget = 100000\n",
            dir.path().display()
        );
        for k in 0..40 {
            t.push_str(&format!(
                "[[accounts]]\nname = \"a{k}\"\nbrand = \"peugeot\"\nrefresh_token = \"r{k}\"\n"
            ));
        }
        std::fs::write(&path, t).unwrap();
        let whole = crate::config::load(&path, crate::config::Checks::ValuesOnly).unwrap();
        let mut served = 0;
        for i in 0..4 {
            let mut c = whole.clone();
            keep(&mut c, i, 4);
            served += c.accounts.len();
            assert_eq!(c.api.rate.per_second.get(), 25);
            assert_eq!(c.api.rate.burst.get(), 2);
            assert_eq!(c.telemetry.daily_request_budget, 25_000);
            assert_eq!(
                c.ops.backup_dir,
                whole.ops.backup_dir.join(format!("shard-{i}"))
            );
        }
        assert_eq!(served, 40);
        let mut c = whole.clone();
        keep(&mut c, 0, 1000);
        assert_eq!(c.api.rate.per_second.get(), 1, "never zero");
    }

    #[test]
    fn pinned_values() {
        assert_eq!(key("alice"), 0x508b_2abb_65a0_3907);
        assert_eq!(key("user2"), 0x4228_c371_628c_9e40);
        let cases: [(&str, [u32; 7]); 4] = [
            ("alice", [0, 0, 0, 3, 4, 4, 4]),
            ("bob@example.com", [0, 0, 0, 3, 3, 3, 3]),
            ("user2", [0, 1, 2, 3, 6, 9, 43]),
            ("account-0", [0, 1, 1, 1, 6, 6, 27]),
        ];
        for (name, want) in cases {
            let got: Vec<u32> = [1, 2, 3, 4, 7, 10, 100]
                .iter()
                .map(|&n| shard_of(name, n))
                .collect();
            assert_eq!(got, want, "{name}");
        }
        // Raw jump values for fixed keys.
        assert_eq!(jump(0, 1000), 0);
        assert_eq!(jump(1, 10), 6);
        assert_eq!(jump(1, 1000), 549);
        assert_eq!(jump(0xdead_beef, 1000), 285);
        assert_eq!(jump(u64::MAX, 10), 9);
        assert_eq!(jump(1, i32::MAX as u32), 262_355_607);
        assert_eq!(jump(0xdead_beef, i32::MAX as u32), 1_452_406_526);
        assert_eq!(jump(42, 0), 0);
    }

    #[test]
    fn growing_by_one_moves_only_accounts_to_the_new_shard() {
        let names: Vec<String> = (0..10_000)
            .map(|i| format!("account-{i}@x.example"))
            .collect();
        for n in 1..=12u32 {
            let mut moved = 0u32;
            let mut counts = vec![0u32; n as usize + 1];
            for name in &names {
                let (before, after) = (shard_of(name, n), shard_of(name, n + 1));
                assert!(before < n && after <= n, "{name}: {before}/{n} -> {after}");
                counts[after as usize] += 1;
                if before != after {
                    assert_eq!(
                        after,
                        n,
                        "{name} moved {before} -> {after} going {n} -> {}",
                        n + 1
                    );
                    moved += 1;
                }
            }
            // Expected 10,000/(n+1) moves; allow ±15 % plus a little for small counts.
            let expect = 10_000.0 / f64::from(n + 1);
            let m = f64::from(moved);
            assert!(
                m > expect * 0.85 - 20.0 && m < expect * 1.15 + 20.0,
                "{n} -> {}: {moved} moved, expected about {expect:.0}",
                n + 1
            );
            // And the shards stay balanced.
            for (s, c) in counts.iter().enumerate() {
                let c = f64::from(*c);
                assert!(
                    c > expect * 0.85 - 20.0 && c < expect * 1.15 + 20.0,
                    "shard {s}/{}: {c} accounts, expected about {expect:.0}",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn keep_partitions_a_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "state_dir = {:?}\n[app]\nclient_id = \"x\"\nclient_secret = \"y\"\n",
            dir.path()
        );
        for i in 0..60 {
            text.push_str(&format!(
                "[[accounts]]\nname = \"a{i}\"\nbrand = \"peugeot\"\n"
            ));
        }
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let mut all = Vec::new();
        for i in 0..3 {
            let mut cfg = crate::config::load(&path, crate::config::Checks::ValuesOnly).unwrap();
            assert_eq!(cfg.accounts.len(), 60);
            keep(&mut cfg, i, 3);
            assert!(!cfg.accounts.is_empty() && cfg.accounts.len() < 60);
            for a in &cfg.accounts {
                assert_eq!(shard_of(&a.name, 3), i);
                all.push(a.name.clone());
            }
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 60, "every account in exactly one shard");
    }
}
