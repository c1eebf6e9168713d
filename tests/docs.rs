//! Tidy checks that keep the documentation true: every module documents itself, ARCHITECTURE.md
//! names modules that exist, the example configuration documents every key, docs/metadata.json
//! describes every column, and every query of docs/schema.md runs.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::path::Path;

use common::*;
use stellantis_sync::sim::SimConfig;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_starts_with_module_docs() {
    let mut files = Vec::new();
    rs_files(&Path::new(ROOT).join("src"), &mut files);
    assert!(files.len() > 20);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not start with a //! module doc",
            f.display()
        );
    }
}

/// Issue 25: ARCHITECTURE.md says what every dependency is for (its "Dependencies" table names
/// each crate of `[dependencies]`, and only those).
#[test]
fn architecture_md_says_what_every_dependency_is_for() {
    let arch = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let table = arch
        .split("## Dependencies")
        .nth(1)
        .and_then(|s| s.split("From the original design").next())
        .expect("ARCHITECTURE.md has a Dependencies section");
    let named: std::collections::BTreeSet<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" | ").next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .collect();
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let deps: std::collections::BTreeSet<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect();
    assert!(deps.len() > 20, "{deps:?}");
    assert_eq!(
        named, deps,
        "ARCHITECTURE.md's table vs Cargo.toml's [dependencies]"
    );
}

#[test]
fn architecture_md_names_real_modules() {
    let arch = std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).unwrap();
    let mut named = 0;
    for word in arch.split('`').skip(1).step_by(2) {
        if let Some(path) = word.strip_prefix("src/") {
            named += 1;
            assert!(
                Path::new(ROOT).join("src").join(path).exists(),
                "ARCHITECTURE.md names src/{path}, which does not exist"
            );
        }
    }
    assert!(
        named >= 15,
        "ARCHITECTURE.md should map the modules ({named} named)"
    );
}

#[test]
fn the_example_config_documents_every_key() {
    let example =
        std::fs::read_to_string(Path::new(ROOT).join("config/stellantis-sync.toml")).unwrap();
    let defaults = serde_json::to_value(stellantis_sync::config::RawConfig::default()).unwrap();
    let mut keys: Vec<String> = Vec::new();
    for (k, v) in defaults.as_object().unwrap() {
        match v {
            serde_json::Value::Object(inner) => keys.extend(inner.keys().cloned()),
            _ => keys.push(k.clone()),
        }
    }
    keys.extend(
        [
            "name",
            "brand",
            "country",
            "enabled",
            "client_id",
            "client_secret",
            "client_secret_file",
            "username",
            "password",
            "password_file",
            "refresh_token",
            "refresh_token_file",
        ]
        .map(String::from),
    );
    for k in keys.iter().filter(|k| *k != "accounts") {
        assert!(
            example.contains(&format!("{k} =")),
            "config/stellantis-sync.toml does not document `{k}`"
        );
    }
}

/// Issue 10 item 18: the shipped example says it shows every default, so every value in it must
/// be the code's default (the accounts, the app credentials and the database path aside).
#[test]
fn the_example_config_shows_the_codes_defaults() {
    use figment::providers::{Format, Serialized, Toml};
    use stellantis_sync::config::RawConfig;
    let path = Path::new(ROOT).join("config/stellantis-sync.toml");
    let shipped: RawConfig = figment::Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::file_exact(&path))
        .extract()
        .unwrap();
    let shipped = serde_json::to_value(&shipped).unwrap();
    let defaults = serde_json::to_value(RawConfig::default()).unwrap();
    let mut compared = 0;
    for (section, value) in defaults.as_object().unwrap() {
        if ["accounts", "app", "database"].contains(&section.as_str()) {
            continue;
        }
        let pairs: Vec<(String, &serde_json::Value, &serde_json::Value)> = match value {
            serde_json::Value::Object(inner) => inner
                .iter()
                .map(|(k, v)| (format!("{section}.{k}"), v, &shipped[section][k]))
                .collect(),
            v => vec![(section.clone(), v, &shipped[section])],
        };
        for (key, want, got) in pairs {
            assert_eq!(
                got, want,
                "config/stellantis-sync.toml: `{key}` is not the default"
            );
            compared += 1;
        }
    }
    assert!(compared >= 20, "{compared} keys compared");
}

/// Issue 10 item 19: every document a source file or a document cites exists in the repository
/// (the reference notes outside it are not for readers of the code).
#[test]
fn cited_documents_exist_in_the_repository() {
    let mut files = Vec::new();
    rs_files(&Path::new(ROOT).join("src"), &mut files);
    for doc in [
        "README.md",
        "ARCHITECTURE.md",
        "RELIABILITY.md",
        "BENCHMARKS.md",
    ] {
        files.push(Path::new(ROOT).join(doc));
    }
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "md") {
            docs.push(entry.path());
        }
    }
    files.extend(docs);
    let mut checked = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for cited in text.split('`').skip(1).step_by(2) {
            let cited = cited.split_whitespace().next().unwrap_or("");
            let cited = cited
                .split('#')
                .next()
                .unwrap_or("")
                .trim_end_matches([',', '.', ')']);
            if !cited.ends_with(".md") || cited.contains('*') || cited.contains('<') {
                continue;
            }
            let found = Path::new(ROOT).join(cited).exists()
                || f.parent().is_some_and(|d| d.join(cited).exists())
                || Path::new(ROOT).join("docs").join(cited).exists();
            assert!(
                found,
                "{} cites `{cited}`, which is not in the repository",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_describes_every_column_and_every_documented_query_runs() {
    let env = Env::new(
        SimConfig::default(),
        |s| {
            vec![
                Acct::bootstrapped(s, 1),
                Acct::bootstrapped(s, 2),
                Acct::bootstrapped(s, 3),
            ]
        },
        // Telemetry on, so the telemetry queries run on rows.
        Opts {
            telemetry: String::new(),
            ..Opts::default()
        },
    )
    .await;
    assert_code(&env.once().await, 0);
    env.sim.tick(5);
    assert_code(&env.once().await, 0);
    let db = env.db();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("docs/metadata.json")).unwrap(),
    )
    .unwrap();
    let tables = &meta["databases"]["stellantis-sync"]["tables"];
    let mut st = db.prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'").unwrap();
    let names: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(names.len() >= 8);
    for t in &names {
        let mut cols = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
            .unwrap();
        for c in cols.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            let c = c.unwrap();
            let d = tables[t]["columns"][&c].as_str().unwrap_or("");
            assert!(
                !d.is_empty(),
                "docs/metadata.json does not describe {t}.{c}"
            );
        }
    }
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/schema.md")).unwrap();
    let queries: Vec<&str> = doc
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .collect();
    assert_eq!(queries.len(), 27);
    for q in queries {
        let q = q.replace(":vin", "''");
        let mut st = db.prepare(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let n = st.query_map([], |_| Ok(())).unwrap().count();
        let _ = n;
    }
}
