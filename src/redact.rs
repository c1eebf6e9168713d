//! Scrubbing secrets out of text that came from a server. Error bodies are quoted in logs, in
//! `sync_runs.error_message` and in `status`; a server that echoes the request (its
//! `Authorization` header, or a form body with a refresh token) must not turn them into a leak.
//!
//! [`tokens`] removes what looks like a credential whatever it is: values after `Bearer` or
//! `Basic`,
//! after `token=`/`password=`/`code=`-style keys (form or JSON), and every UUID-shaped word
//! (Stellantis' access and refresh tokens are UUIDs). [`known`] removes given secrets verbatim
//! (a client secret or a password need not look like anything).

use secrecy::{ExposeSecret, SecretString};

const MASK: &str = "[redacted]";

/// Keys whose value is a credential, in a form body, a query string or JSON.
const SECRET_KEYS: [&str; 7] = [
    "refresh_token",
    "access_token",
    "id_token",
    "password",
    "client_secret",
    "code",
    "code_verifier",
];

/// Whether `w` is shaped like a UUID (8-4-4-4-12 hex digits).
fn is_uuid(w: &[u8]) -> bool {
    w.len() == 36
        && w.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Masks credential-looking values in `text`.
pub fn tokens(text: &str) -> String {
    let mut out = text.to_owned();
    // Values after a secret key: `key=value` (form, query) or `"key":"value"` (JSON).
    for key in SECRET_KEYS {
        for pat in [
            format!("{key}="),
            format!("\"{key}\":\""),
            format!("\"{key}\": \""),
        ] {
            let mut from = 0;
            while let Some(at) = out[from..].find(&pat) {
                let start = from + at + pat.len();
                let end = out[start..]
                    .find(['&', '"', ' ', ',', '}', '\n'])
                    .map_or(out.len(), |e| start + e);
                if end > start {
                    out.replace_range(start..end, MASK);
                }
                from = start + MASK.len().min(out.len() - start);
            }
        }
    }
    // `Bearer <token>` and `Basic <base64 of id:secret>` (any case).
    let mut masked = out;
    for scheme in ["bearer ", "basic "] {
        let lower = masked.to_ascii_lowercase();
        let mut from = 0;
        let mut next = String::with_capacity(masked.len());
        while let Some(at) = lower[from..].find(scheme) {
            let start = from + at + scheme.len();
            let end = masked[start..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .map_or(masked.len(), |e| start + e);
            next.push_str(&masked[from..start]);
            next.push_str(MASK);
            from = end;
        }
        next.push_str(&masked[from..]);
        masked = next;
    }
    // UUID-shaped words.
    let bytes = masked.as_bytes();
    let mut result = String::with_capacity(masked.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len()
            && is_uuid(&bytes[i..i + 36])
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes.get(i + 36).is_none_or(|b| !b.is_ascii_alphanumeric())
        {
            result.push_str(MASK);
            i += 36;
        } else {
            let ch = masked[i..].chars().next().unwrap_or(' ');
            result.push(ch);
            i += ch.len_utf8();
        }
    }
    result
}

/// `s` with every control character written as an escape (`\n`, `\u{1b}`), for one field of a
/// line printed to a terminal: a server's VIN or error text must not forge lines or drive the
/// terminal.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Masks each of `secrets` (verbatim and URL-encoded) in `text`.
pub fn known<'a>(text: &str, secrets: impl IntoIterator<Item = &'a SecretString>) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        let raw = s.expose_secret();
        if raw.len() < 4 {
            continue;
        }
        let encoded: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        out = out.replace(raw, MASK).replace(&encoded, MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("VR3ABC"), "VR3ABC");
        assert_eq!(
            printable("VIN\nfake row\u{1b}[2J"),
            "VIN\\nfake row\\u{1b}[2J"
        );
        assert_eq!(printable("Citroën"), "Citroën");
    }

    #[test]
    fn echoed_credentials_are_masked() {
        let t = "f2af01f8-1111-2222-3333-444455556666";
        for (input, leaked) in [
            (
                format!("bad request: grant_type=refresh_token&refresh_token={t}&scope=x"),
                t.to_owned(),
            ),
            (
                format!("HTTP 404 40400 No trip found Bearer {t}"),
                t.to_owned(),
            ),
            (
                "{\"refresh_token\":\"abc-secret-value\",\"x\":1}".to_owned(),
                "abc-secret-value".into(),
            ),
            (
                "authorization: BEARER opaque.jwt.value".to_owned(),
                "opaque.jwt.value".into(),
            ),
            (
                "code=728a51bb-1111-2222-3333-444455556666&state=s".to_owned(),
                "728a51bb".into(),
            ),
            (
                "password=hunter22&username=bob".to_owned(),
                "hunter22".into(),
            ),
            (format!("id {t}."), t.to_owned()),
            (
                "echo: Authorization: Basic c2ltLWNsaWVudC1pZDpzaW0tY2xpZW50LXNlY3JldA=="
                    .to_owned(),
                "c2ltLWNsaWVudC1pZDpzaW0tY2xpZW50LXNlY3JldA".into(),
            ),
        ] {
            let out = tokens(&input);
            assert!(!out.contains(&leaked), "{input} -> {out}");
            assert!(out.contains(MASK), "{out}");
        }
        assert_eq!(tokens("50000 CORVET Error"), "50000 CORVET Error");
        assert_eq!(tokens("no uuid-like-thing here"), "no uuid-like-thing here");
        let secret = SecretString::from("my app secret/1".to_owned());
        let out = known("echo: my+app+secret%2F1 and my app secret/1", [&secret]);
        assert!(
            !out.contains("my app secret") && !out.contains("my+app+secret"),
            "{out}"
        );
    }
}
