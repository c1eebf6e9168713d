//! How raw `/status` bodies are stored in `status_bodies`: compactly, and still readable with
//! nothing but zlib.
//!
//! A vehicle's bodies differ from one another in a few values and timestamps; stored as text,
//! they were 90 % of the database. So one body of a vehicle is kept as its JSON text (a *base*,
//! `base_id IS NULL`), and the vehicle's later bodies are stored as zlib streams (RFC 1950) whose
//! preset dictionary (FDICT) is the text of an earlier body, the one `base_id` names: usually the
//! vehicle's previous body (consecutive bodies share the most), about 150 bytes instead of about
//! 2,900. A chain of such bodies is at most [`MAX_CHAIN`] long: the body after it is stored
//! against the base again (about 220 bytes), so reading any body inflates at most
//! [`MAX_CHAIN`] streams. The stream format is plain zlib, so any reader decodes it; in Python:
//! `zlib.decompressobj(zdict=text_of(base_id).encode()).decompress(blob)`, recursively.
//!
//! A vehicle starts a new base when it has none, when its base is older than
//! [`BASE_MAX_AGE`] (so retention can eventually prune old bases), or when a body compresses
//! poorly against its predecessor (the body's shape changed).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A base serves a vehicle's bodies for a week at most.
pub const BASE_MAX_AGE: i64 = 7 * 86_400;

/// At most this many bodies in a row are stored each against the one before.
pub const MAX_CHAIN: u32 = 8;

/// No decoded body is longer (the API's bodies are a few KiB).
const MAX_TEXT: usize = 16 << 20;

/// A body that compresses to more than this share of its text becomes a base.
const WORTH_IT: f64 = 0.5;

/// A base: (body_id, text, first_fetched_ts).
pub type Base = (i64, String, i64);

/// What a vehicle's next body can be stored against: its latest stored body and that body's
/// base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub body_id: i64,
    pub text: String,
    /// Streams between this body and its base (0: it is the base).
    pub depth: u32,
    pub base: Base,
}

impl Anchor {
    /// A base as its own anchor.
    pub fn base(base: Base) -> Anchor {
        Anchor {
            body_id: base.0,
            text: base.1.clone(),
            depth: 0,
            base,
        }
    }
}

/// How one new body is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// As its JSON text: it is a base.
    Base,
    /// As a zlib stream whose dictionary is the text of body `base_id`, at `depth` from its base.
    Delta {
        base_id: i64,
        depth: u32,
        blob: Vec<u8>,
    },
}

/// A stored body that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("status body {body_id}: {reason}")]
pub struct BodyError {
    pub body_id: i64,
    pub reason: String,
}

/// Decides how `text`, fetched at `ts`, is stored given the vehicle's latest body.
pub fn encode(anchor: Option<&Anchor>, text: &str, ts: i64) -> Stored {
    let Some(anchor) = anchor else {
        return Stored::Base;
    };
    let (base_id, base_text, base_ts) = &anchor.base;
    if ts.saturating_sub(*base_ts) > BASE_MAX_AGE {
        return Stored::Base;
    }
    let (dict_id, dict, depth) = if anchor.depth < MAX_CHAIN {
        (anchor.body_id, &anchor.text, anchor.depth + 1)
    } else {
        (*base_id, base_text, 1)
    };
    match compress(dict.as_bytes(), text.as_bytes()) {
        Some(blob) if (blob.len() as f64) <= WORTH_IT * text.len() as f64 => Stored::Delta {
            base_id: dict_id,
            depth,
            blob,
        },
        _ => Stored::Base,
    }
}

/// A zlib stream of `data` with `dict` as its preset dictionary; `None` only if zlib refuses.
pub fn compress(dict: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let mut c = Compress::new(Compression::new(6), true);
    c.set_dictionary(dict).ok()?;
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(256));
        }
        let before = (c.total_in(), c.total_out());
        match c.compress_vec(
            data_left(data, c.total_in()),
            &mut out,
            FlushCompress::Finish,
        ) {
            Ok(Status::StreamEnd) => return Some(out),
            Ok(_) if before == (c.total_in(), c.total_out()) && out.len() < out.capacity() => {
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The text of a stored body: `base_text` is the text of body `base_id` (`None` for a base).
pub fn decode(body_id: i64, stored: &[u8], base_text: Option<&str>) -> Result<String, BodyError> {
    let err = |reason: String| BodyError { body_id, reason };
    let Some(dict) = base_text else {
        return String::from_utf8(stored.to_vec()).map_err(|e| err(e.to_string()));
    };
    let mut d = Decompress::new(true);
    let mut out = Vec::with_capacity(stored.len() * 12);
    let mut dict_set = false;
    loop {
        if out.len() == out.capacity() {
            if out.len() >= MAX_TEXT {
                return Err(err(format!("longer than {MAX_TEXT} bytes")));
            }
            out.reserve(out.capacity().max(4096));
        }
        let before = (d.total_in(), d.total_out());
        let input = data_left(stored, d.total_in());
        match d.decompress_vec(input, &mut out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) if before == (d.total_in(), d.total_out()) && out.len() < out.capacity() => {
                return Err(err("the zlib stream is truncated".into()));
            }
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() && !dict_set => {
                d.set_dictionary(dict.as_bytes())
                    .map_err(|_| err("the base is not this body's dictionary".into()))?;
                dict_set = true;
            }
            Err(e) => return Err(err(format!("not a zlib stream: {e}"))),
        }
    }
    String::from_utf8(out).map_err(|e| err(e.to_string()))
}

fn data_left(data: &[u8], total_in: u64) -> &[u8] {
    data.get(usize::try_from(total_in).unwrap_or(usize::MAX)..)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(soc: u32, ts: &str) -> String {
        format!(
            r#"{{"createdAt":"{ts}","energies":[{{"type":"Electric","level":{soc},"createdAt":"{ts}"}}],"_links":{{"self":{{"href":"https://api.example/vehicles/{}"}}}}}}"#,
            "ab".repeat(96)
        )
    }

    #[test]
    fn a_delta_round_trips_and_is_small() {
        let base = body(50, "2026-01-01T00:00:00Z");
        let next = body(51, "2026-01-01T00:02:00Z");
        let stored = encode(Some(&Anchor::base((7, base.clone(), 0))), &next, 120);
        let Stored::Delta {
            base_id,
            depth: 1,
            blob,
        } = stored
        else {
            panic!("expected a delta, got {stored:?}")
        };
        assert_eq!(base_id, 7);
        assert!(
            blob.len() * 4 < next.len(),
            "{} vs {}",
            blob.len(),
            next.len()
        );
        assert_eq!(decode(1, &blob, Some(&base)).unwrap(), next);
    }

    #[test]
    fn a_vehicle_without_a_base_an_old_base_or_a_new_shape_starts_a_base() {
        let base = body(50, "2026-01-01T00:00:00Z");
        assert_eq!(encode(None, &base, 0), Stored::Base);
        let b = Anchor::base((1, base.clone(), 0));
        assert_eq!(encode(Some(&b), &base, BASE_MAX_AGE + 1), Stored::Base);
        assert!(matches!(
            encode(Some(&b), &base, BASE_MAX_AGE),
            Stored::Delta { .. }
        ));
        let other: String = (0..400)
            .map(|i| format!("{:x}", (i * 7919) % 65_521))
            .collect();
        let shape = format!(r#"{{"other":"{other}"}}"#);
        assert_eq!(encode(Some(&b), &shape, 10), Stored::Base);
    }

    #[test]
    fn a_chain_follows_the_previous_body_and_returns_to_the_base_after_max_chain() {
        let base = body(50, "2026-01-01T00:00:00Z");
        let mut anchor = Anchor::base((1, base.clone(), 0));
        let mut depths = Vec::new();
        for i in 0..2 * MAX_CHAIN + 1 {
            let text = body(51 + i, &format!("2026-01-01T00:{:02}:00Z", 2 * i + 2));
            let Stored::Delta {
                base_id,
                depth,
                blob,
            } = encode(Some(&anchor), &text, 60)
            else {
                panic!("body {i} should be a delta")
            };
            let dict = if base_id == 1 { &base } else { &anchor.text };
            assert!(base_id == 1 || base_id == anchor.body_id, "{base_id}");
            assert_eq!(decode(100 + i64::from(i), &blob, Some(dict)).unwrap(), text);
            depths.push(depth);
            anchor = Anchor {
                body_id: 100 + i64::from(i),
                text,
                depth,
                base: anchor.base.clone(),
            };
        }
        let mut want: Vec<u32> = (1..=MAX_CHAIN).chain(1..=MAX_CHAIN).collect();
        want.push(1);
        assert_eq!(depths, want);
    }

    #[test]
    fn a_body_like_its_predecessor_is_smaller_against_it_than_against_the_base() {
        let base = body(50, "2026-01-01T00:00:00Z");
        let prev = body(70, "2026-01-01T05:00:00Z");
        let next = body(71, "2026-01-01T05:02:00Z");
        let against_base = compress(base.as_bytes(), next.as_bytes()).unwrap();
        let anchor = Anchor {
            body_id: 5,
            text: prev,
            depth: 3,
            base: (1, base, 0),
        };
        let Stored::Delta {
            base_id: 5,
            depth: 4,
            blob,
        } = encode(Some(&anchor), &next, 60)
        else {
            panic!("expected a delta against body 5")
        };
        assert!(
            blob.len() <= against_base.len(),
            "{} vs {}",
            blob.len(),
            against_base.len()
        );
    }

    #[test]
    fn python_zlib_with_zdict_reads_the_same_stream_format() {
        // The header says FDICT with the base's Adler-32, as RFC 1950 §2.2 defines it.
        let base = body(50, "2026-01-01T00:00:00Z");
        let blob = compress(base.as_bytes(), body(52, "x").as_bytes()).unwrap();
        assert_eq!(blob[0] & 0x0f, 8, "deflate");
        assert_eq!(u16::from_be_bytes([blob[0], blob[1]]) % 31, 0, "FCHECK");
        assert_ne!(blob[1] & 0x20, 0, "FDICT");
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &x in base.as_bytes() {
            a = (a + u32::from(x)) % 65_521;
            b = (b + a) % 65_521;
        }
        assert_eq!(
            u32::from_be_bytes([blob[2], blob[3], blob[4], blob[5]]),
            (b << 16) | a
        );
    }

    #[test]
    fn damaged_streams_and_wrong_bases_are_errors_not_garbage() {
        let base = body(50, "2026-01-01T00:00:00Z");
        let blob = compress(base.as_bytes(), body(51, "y").as_bytes()).unwrap();
        let e = decode(9, &blob[..blob.len() / 2], Some(&base)).unwrap_err();
        assert!(e.to_string().starts_with("status body 9: "), "{e}");
        assert!(decode(9, &blob, Some("{\"another\":\"base\"}")).is_err());
        assert!(decode(9, b"not zlib at all", Some(&base)).is_err());
    }
}
