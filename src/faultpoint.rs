//! Named crash points for crash-consistency tests (`RELIABILITY.md`). In debug builds,
//! setting `STELLANTIS_CRASH_AT=<name>` makes the process abort the first time execution
//! reaches that point, as a power cut or `kill -9` would. Release builds compile this to nothing.

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
