//! `stellantis-sync init`: writes a first configuration for one account. It asks for (or takes as
//! flags) the account name, brand, country, state directory and database path, writes a
//! commented file that `check-config` accepts (it is loaded with the same checks before it is put
//! in place) and prints the next two commands. No client value is asked for: the brand preset
//! (`brand::Preset`) is used. An existing file is never overwritten: the new one is written beside
//! it and linked into place (`persist_noclobber`), which fails if the name exists.
// Printing and asking are this command's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::brand::Brand;
use crate::cli::InitArgs;
use crate::config;
use crate::exit;

/// The answers that make a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub account: String,
    pub brand: Brand,
    pub country: String,
    pub state_dir: PathBuf,
    /// `None`: the default, `<state_dir>/stellantis-sync.sqlite`.
    pub database: Option<PathBuf>,
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; it was left as it is (edit it, or pass another --config PATH)")]
    Exists(PathBuf),
    #[error("{what}: {reason}")]
    Bad { what: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration written would not be accepted:\n{0}")]
    Invalid(config::ConfigError),
}

/// The `init` command: exit code after printing the outcome.
pub fn command(config_path: &Path, args: InitArgs) -> u8 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let result = answers(&args, &mut input, &mut std::io::stdout())
        .and_then(|a| write_config(config_path, &a).map(|p| (a, p)));
    match result {
        Ok((a, path)) => {
            println!("{}", next_steps(&path, &a));
            exit::OK
        }
        Err(e) => {
            eprintln!("stellantis-sync init: {e}");
            match e {
                InitError::Io { .. } => exit::IOERR,
                InitError::Bad { .. } => exit::USAGE,
                InitError::Exists(_) | InitError::Invalid(_) => exit::CONFIG,
            }
        }
    }
}

/// The flags, with every missing one asked for on `input` (an empty answer or the end of input
/// takes the default shown in brackets; the brand has none).
pub fn answers(
    args: &InitArgs,
    input: &mut dyn BufRead,
    prompt: &mut dyn Write,
) -> Result<Answers, InitError> {
    let mut ask =
        |question: &str, default: &str, given: Option<String>| -> Result<String, InitError> {
            if let Some(v) = given {
                return Ok(v.trim().to_owned());
            }
            let shown = if default.is_empty() {
                String::new()
            } else {
                format!(" [{default}]")
            };
            let _ = write!(prompt, "{question}{shown}: ");
            let _ = prompt.flush();
            let mut line = String::new();
            input.read_line(&mut line).map_err(|source| InitError::Io {
                path: PathBuf::from("standard input"),
                source,
            })?;
            let line = line.trim();
            Ok(if line.is_empty() { default } else { line }.to_owned())
        };
    let account = ask(
        "Account name (names it in logs and in `login --account`)",
        "me",
        args.account.clone(),
    )?;
    if !config::valid_name(&account) {
        return Err(InitError::Bad {
            what: "account name",
            reason: format!("`{account}` is not valid (letters, digits, - _ . @; at most 64)"),
        });
    }
    let brand_text = ask(
        "Brand (peugeot, citroen, ds, opel, vauxhall)",
        "",
        args.brand.clone(),
    )?;
    let brand = brand_text.parse::<Brand>().map_err(|e| InitError::Bad {
        what: "brand",
        reason: if brand_text.is_empty() {
            "missing (pass --brand peugeot|citroen|ds|opel|vauxhall)".into()
        } else {
            e.to_string()
        },
    })?;
    let country = ask(
        "Country the brand account was created in (two letters, e.g. fr, de, gb)",
        "fr",
        args.country.clone(),
    )?
    .to_ascii_lowercase();
    if country.len() != 2 || !country.bytes().all(|c| c.is_ascii_lowercase()) {
        return Err(InitError::Bad {
            what: "country",
            reason: format!("`{country}` is not a two-letter country code"),
        });
    }
    let default_state = config::RawConfig::default().state_dir;
    let state_dir = absolute(&ask(
        "State directory (tokens, locks)",
        &default_state.display().to_string(),
        args.state_dir.as_ref().map(|p| p.display().to_string()),
    )?)?;
    let db_default = state_dir.join("stellantis-sync.sqlite");
    let database = absolute(&ask(
        "Database file",
        &db_default.display().to_string(),
        args.database.as_ref().map(|p| p.display().to_string()),
    )?)?;
    Ok(Answers {
        account,
        brand,
        country,
        state_dir,
        database: (database != db_default).then_some(database),
    })
}

/// A path made absolute against the working directory (the service runs elsewhere).
fn absolute(text: &str) -> Result<PathBuf, InitError> {
    if text.contains(['"', '\n', '\\']) {
        return Err(InitError::Bad {
            what: "path",
            reason: format!("`{text}` contains a quote, a backslash or a line break"),
        });
    }
    std::path::absolute(text).map_err(|source| InitError::Io {
        path: PathBuf::from(text),
        source,
    })
}

/// The configuration's text: the answers, and every other key a first-time owner may want, in
/// comments.
pub fn render(a: &Answers, path: &Path) -> String {
    let database = match &a.database {
        Some(p) => format!("database = \"{}\"", p.display()),
        None => format!(
            "# database = \"{}\"",
            a.state_dir.join("stellantis-sync.sqlite").display()
        ),
    };
    format!(
        r#"# stellantis-sync configuration written by `stellantis-sync init`.
# Every key and its default: config/stellantis-sync.toml in the source, and README.md.
# Check it with: stellantis-sync --config {path} check-config

# Token store (tokens/, mode 0700), lock files and the request budget. Created when needed.
state_dir = "{state_dir}"

# The SQLite change history (default: <state_dir>/stellantis-sync.sqlite).
{database}

# When passes run (cron with seconds, UTC): every 5 minutes.
# schedule = "0 */5 * * * *"

# No [app] section and no client_id/client_secret: the {display} app's own client (the brand
# preset: identity provider {host}, realm {realm}) is used.
# See docs/real-account.md.

[[accounts]]
name = "{name}"
brand = "{brand}"
# The country the brand account was created in; the sign-in returns to
# {redirect}
country = "{country}"
# Tokens come from `stellantis-sync login --account {name}`: never copy a refresh token from
# another tool (each refresh kills the previous token; one of the two would lose the account).
"#,
        path = path.display(),
        state_dir = a.state_dir.display(),
        display = a.brand.display(),
        host = a.brand.preset().idp_host,
        realm = a.brand.realm(),
        name = a.account,
        brand = a.brand.key(),
        redirect = a.brand.app_redirect_uri(&a.country),
        country = a.country,
    )
}

/// Writes the configuration at `path` unless something is there, after checking that it loads
/// as `check-config` would load it. Returns the path written.
pub fn write_config(path: &Path, a: &Answers) -> Result<PathBuf, InitError> {
    let path = std::path::absolute(path).map_err(|source| InitError::Io {
        path: path.to_owned(),
        source,
    })?;
    if path.symlink_metadata().is_ok() {
        return Err(InitError::Exists(path));
    }
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| InitError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix(".stellantis-sync-init")
            .suffix(".toml")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(io(dir))?
    };
    std::fs::write(tmp.path(), render(a, &path)).map_err(io(tmp.path()))?;
    config::load(tmp.path(), config::Checks::Full).map_err(InitError::Invalid)?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    // A link, never a rename: a file created meanwhile under that name is kept.
    match tmp.persist_noclobber(&path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(InitError::Exists(path));
        }
        Err(e) => return Err(io(&path)(e.error)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(path)
}

/// What to run next: `login`, then a pass (`--once`) or the service.
pub fn next_steps(path: &Path, a: &Answers) -> String {
    let c = path.display();
    format!(
        "Wrote {c} (account `{name}`, {brand}, country {cc}; no client value needed).\n\
         \n\
         Next:\n  \
         1. stellantis-sync --config {c} login --account {name}\n     \
            (sign in in a browser and paste back the address it fails to open)\n  \
         2. stellantis-sync --config {c} --once\n     \
            (one pass; or run it as a service: systemctl enable --now stellantis-sync, see README \"Install\")",
        name = a.account,
        brand = a.brand.display(),
        cc = a.country,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InitArgs {
        InitArgs {
            account: None,
            brand: None,
            country: None,
            state_dir: None,
            database: None,
        }
    }

    #[test]
    fn missing_flags_are_asked_for_and_defaults_taken() {
        let mut input = std::io::Cursor::new("car\nOpel\nDE\n/srv/s\n\n");
        let mut prompts = Vec::new();
        let a = answers(&args(), &mut input, &mut prompts).unwrap();
        assert_eq!(a.account, "car");
        assert_eq!(a.brand, Brand::Opel);
        assert_eq!(a.country, "de");
        assert_eq!(a.state_dir, PathBuf::from("/srv/s"));
        assert_eq!(a.database, None);
        let prompts = String::from_utf8(prompts).unwrap();
        assert!(
            prompts.contains("Brand (peugeot") && prompts.contains("[fr]"),
            "{prompts}"
        );
        // Flags are not asked for; the end of input takes the defaults; the brand has none.
        let mut given = args();
        given.brand = Some("ds".into());
        let a = answers(&given, &mut std::io::Cursor::new(""), &mut Vec::new()).unwrap();
        assert_eq!((a.account.as_str(), a.country.as_str()), ("me", "fr"));
        let e = answers(&args(), &mut std::io::Cursor::new(""), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("--brand"), "{e}");
        let mut bad = args();
        bad.brand = Some("fiat".into());
        let e = answers(&bad, &mut std::io::Cursor::new(""), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("unknown brand `fiat`"), "{e}");
    }

    #[test]
    fn the_written_file_loads_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/config.toml");
        for b in Brand::ALL {
            let a = Answers {
                account: "me".into(),
                brand: b,
                country: "gb".into(),
                state_dir: dir.path().join("state"),
                database: Some(dir.path().join("state/db.sqlite")),
            };
            let _ = std::fs::remove_file(&path);
            write_config(&path, &a).unwrap();
            let cfg = config::load(&path, config::Checks::Full).unwrap();
            assert_eq!(cfg.accounts[0].brand, b);
            assert_eq!(cfg.accounts[0].client_id, b.preset().client_id);
            assert_eq!(cfg.database, dir.path().join("state/db.sqlite"));
            // Nothing but the file itself is left in its directory.
            assert_eq!(
                std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
                1
            );
        }
        std::fs::write(&path, "# mine\n").unwrap();
        let a = Answers {
            account: "me".into(),
            brand: Brand::Ds,
            country: "fr".into(),
            state_dir: dir.path().join("state"),
            database: None,
        };
        assert!(matches!(write_config(&path, &a), Err(InitError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    }
}
