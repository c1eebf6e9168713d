//! Named crash points for crash-consistency tests (`RELIABILITY.md`). In debug builds,
//! setting `STELLANTIS_CRASH_AT=<name>` makes the process abort the first time execution
//! reaches that point, as a power cut or `kill -9` would; `STELLANTIS_FAIL_AT=<name>` makes
//! [`fails`] answer true there, as a busy or failing disk would. Release builds compile this to
//! nothing.

/// Aborts the process here if the crash point `name` is armed.
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        if std::env::var("STELLANTIS_CRASH_AT").is_ok_and(|v| v == name) {
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Whether the failure point `name` is armed (debug builds only): the caller then fails as if
/// its IO had.
pub fn fails(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        std::env::var("STELLANTIS_FAIL_AT").is_ok_and(|v| v == name)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
