#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]
//! The command line as a user meets it: output that goes to a closed pipe.
/// `status | head -1` with many accounts: the reader goes away; the program ends quietly with
/// 141 (as for SIGPIPE), not with a panic (exit 101/134) on stderr.
#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let mut t = format!(
        "state_dir = \"{}\"\n[app]\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        dir.path().join("state").display()
    );
    for k in 0..3000 {
        t.push_str(&format!(
            "[[accounts]]\nname = \"a{k}\"\nbrand = \"peugeot\"\nrefresh_token = \"r{k}\"\n"
        ));
    }
    std::fs::write(&cfg, t).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stellantis-sync"))
        .args(["--config", cfg.to_str().unwrap(), "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    let mut out = child.stdout.take().unwrap();
    let _ = out.read(&mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        matches!(o.status.code(), Some(141 | 0)),
        "{:?} {err}",
        o.status
    );
}
