//! The pure core: what changed between what the database knows of an account's vehicles and a
//! complete listing. No IO, no clock, no client.
//!
//! Rules: a vehicle in the listing that is unknown (or was removed) is `added` (its JSON is the
//! new value); a known vehicle missing from the listing is `removed` (its last JSON is the old
//! value), so replaying the history from any point reproduces every later state; for a vehicle in both, every JSON leaf that differs is
//! one `changed` row, named by its JSON pointer. A field that appears or disappears is a change
//! (the missing side is `None`, stored as SQL NULL); one that becomes `null` is a change to the
//! JSON value `null`; a change of type is a change. Arrays compare by position; object keys that
//! only move are not a change.
//!
//! Only a [`CompleteListing`] can be diffed, and only [`crate::listing::ListingBuilder`] can build
//! one after every page arrived and the totals agree: a partial or failed listing cannot yield
//! removals by construction.
//!
//! A listing of one page is one answer of the server, a consistent snapshot. A listing of several
//! pages is not: the list can change between two requests (a vehicle removed before page 2 shifts
//! the next one out of sight while the total stays the same). So a vehicle absent from a
//! multi-page listing is only *missing* ([`first_absences`]); it is recorded `removed` when the
//! next complete listing still lacks it ([`Known::missing`]), or at once by a one-page listing.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::api::model::{ListedVehicle, vin_of};

/// A vehicle as the database knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub vehicle_id: String,
    pub vin: Option<String>,
    /// Its JSON; `None` means the store already established that the listed JSON is identical
    /// (same hash), so there is nothing to compare.
    pub data: Option<Value>,
    /// It was removed from the account earlier.
    pub removed: bool,
    /// The previous complete listing (of several pages) lacked it; not yet recorded removed.
    pub missing: bool,
}

/// Every vehicle of an account, from a listing that is known to be complete.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleteListing {
    vehicles: Vec<ListedVehicle>,
    /// It came in one answer (one page, or "No vehicle found"): a consistent snapshot.
    single_page: bool,
}

impl CompleteListing {
    /// Only the listing builder (and tests) vouch for completeness.
    pub(crate) fn new(vehicles: Vec<ListedVehicle>, single_page: bool) -> CompleteListing {
        CompleteListing {
            vehicles,
            single_page,
        }
    }
    /// Whether it came in one answer of the server.
    pub fn single_page(&self) -> bool {
        self.single_page
    }
    /// Whether a vehicle it lacks is only recorded missing until the next listing confirms it
    /// (then removed), instead of removed now: when it came in several answers (the list may
    /// have changed between pages), and when it is empty. An empty answer would remove every
    /// vehicle at once: one glitch of the server (a 200 with an empty collection, or a "No
    /// vehicle found" during an outage) must not invent the removal of a whole account's cars.
    pub fn removals_need_confirmation(&self) -> bool {
        !self.single_page || self.vehicles.is_empty()
    }
    /// For benchmarks and tests that feed the store directly. Production code gets a listing
    /// only from the fetcher, which checks completeness first. Vehicles without a string id are
    /// dropped.
    #[doc(hidden)]
    pub fn assume_complete(vehicles: &[Value]) -> CompleteListing {
        CompleteListing::new(
            vehicles
                .iter()
                .filter_map(ListedVehicle::from_value)
                .collect(),
            true,
        )
    }
    /// The vehicles, each as received.
    pub fn vehicles(&self) -> &[ListedVehicle] {
        &self.vehicles
    }
    pub fn len(&self) -> usize {
        self.vehicles.len()
    }
    pub fn is_empty(&self) -> bool {
        self.vehicles.is_empty()
    }
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Added,
    Removed,
    Changed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "added",
            Kind::Removed => "removed",
            Kind::Changed => "changed",
        }
    }
}

/// One row of `vehicle_changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub vehicle_id: String,
    pub vin: Option<String>,
    pub kind: Kind,
    pub field: Option<String>,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The changes from `known` to `listing`, in listing order, removals last.
pub fn diff(known: &[Known], listing: &CompleteListing) -> Vec<Change> {
    let by_id: HashMap<&str, &Known> = known.iter().map(|k| (k.vehicle_id.as_str(), k)).collect();
    let mut out = Vec::new();
    let mut present = HashSet::new();
    for listed in listing.vehicles() {
        let id = listed.id.as_str();
        if !present.insert(id) {
            continue;
        }
        match by_id.get(id) {
            Some(k) if !k.removed => {
                // `None`: the store saw the same hash; nothing to compare, nothing to parse.
                let Some(old) = &k.data else { continue };
                let v = listed.value();
                let mut leaves = Vec::new();
                leaf_diff(&mut String::new(), Some(old), Some(&v), &mut leaves);
                out.extend(leaves.into_iter().map(|(field, old, new)| Change {
                    vehicle_id: id.to_owned(),
                    vin: vin_of(&v).or_else(|| k.vin.clone()),
                    kind: Kind::Changed,
                    field: Some(field),
                    old,
                    new,
                }));
            }
            _ => {
                let v = listed.value();
                out.push(Change {
                    vehicle_id: id.to_owned(),
                    vin: vin_of(&v),
                    kind: Kind::Added,
                    field: None,
                    old: None,
                    new: Some(v),
                });
            }
        }
    }
    for k in known.iter().filter(|k| {
        !k.removed
            && !present.contains(k.vehicle_id.as_str())
            && (!listing.removals_need_confirmation() || k.missing)
    }) {
        out.push(Change {
            vehicle_id: k.vehicle_id.clone(),
            vin: k.vin.clone(),
            kind: Kind::Removed,
            field: None,
            old: k.data.clone(),
            new: None,
        });
    }
    out
}

/// Known vehicles that a multi-page or empty listing lacks for the first time: recorded
/// missing, not removed, until the next complete listing confirms.
pub fn first_absences<'a>(known: &'a [Known], listing: &CompleteListing) -> Vec<&'a str> {
    if !listing.removals_need_confirmation() {
        return Vec::new();
    }
    let present: HashSet<&str> = listing.vehicles().iter().map(|v| v.id.as_str()).collect();
    known
        .iter()
        .filter(|k| !k.removed && !k.missing && !present.contains(k.vehicle_id.as_str()))
        .map(|k| k.vehicle_id.as_str())
        .collect()
}

/// RFC 6901 escaping of one pointer segment.
fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

type Leaf = (String, Option<Value>, Option<Value>);

fn leaf_diff(path: &mut String, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Leaf>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a
                .keys()
                .chain(b.keys().filter(|k| !a.contains_key(*k)))
                .collect();
            keys.sort();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(k));
                leaf_diff(path, a.get(k), b.get(k), out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                leaf_diff(path, a.get(i), b.get(i), out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push((path.clone(), a.cloned(), b.cloned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(id: &str, data: Value) -> Known {
        Known {
            vehicle_id: id.into(),
            vin: data.get("vin").and_then(Value::as_str).map(str::to_owned),
            data: Some(data),
            removed: false,
            missing: false,
        }
    }

    /// Renders changes one per line: `kind id field old -> new` (`-` for a missing side).
    fn check(before: &[Known], after: Vec<Value>, expect: &[&str]) {
        let got: Vec<String> = diff(before, &CompleteListing::assume_complete(&after))
            .iter()
            .map(|c| {
                let side = |v: &Option<Value>| v.as_ref().map_or("-".to_owned(), Value::to_string);
                match c.kind {
                    Kind::Changed => format!(
                        "changed {} {} {} -> {}",
                        c.vehicle_id,
                        c.field.as_deref().unwrap_or(""),
                        side(&c.old),
                        side(&c.new)
                    ),
                    k => format!("{} {}", k.as_str(), c.vehicle_id),
                }
            })
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn a_multi_page_listing_removes_only_what_the_next_listing_confirms() {
        let a = json!({"id": "a"});
        let b = json!({"id": "b"});
        let multi = |v: Vec<Value>| {
            CompleteListing::new(
                v.iter().filter_map(ListedVehicle::from_value).collect(),
                false,
            )
        };
        let before = [known("a", a.clone()), known("b", b.clone())];
        // First absence in a listing of several pages: missing, not removed (issue 10 item 5).
        let l = multi(vec![a.clone()]);
        assert!(diff(&before, &l).is_empty());
        assert_eq!(first_absences(&before, &l), vec!["b"]);
        // The next complete listing still lacks it: now it is removed.
        let mut again = before.clone();
        again[1].missing = true;
        let changes = diff(&again, &l);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].kind, changes[0].vehicle_id.as_str()),
            (Kind::Removed, "b")
        );
        assert!(first_absences(&again, &l).is_empty());
        // It came back: no change at all, and nothing missing.
        let back = multi(vec![a.clone(), b.clone()]);
        assert!(diff(&again, &back).is_empty());
        assert!(first_absences(&again, &back).is_empty());
        // A one-page listing is one answer of the server: authoritative at once.
        check(&before, vec![a], &["removed b"]);
    }

    #[test]
    fn an_empty_listing_removes_nothing_until_the_next_confirms() {
        // The ops adversarial pass: one 200 with an empty collection recorded every car
        // removed, then added again by the next pass.
        let before = [
            known("a", json!({"id": "a"})),
            known("b", json!({"id": "b"})),
        ];
        let empty = CompleteListing::assume_complete(&[]);
        assert!(empty.single_page() && empty.removals_need_confirmation());
        assert!(diff(&before, &empty).is_empty());
        assert_eq!(first_absences(&before, &empty), vec!["a", "b"]);
        let mut again = before.clone();
        for k in &mut again {
            k.missing = true;
        }
        let removed: Vec<String> = diff(&again, &empty)
            .into_iter()
            .map(|c| c.vehicle_id)
            .collect();
        assert_eq!(removed, ["a", "b"]);
    }

    #[test]
    fn added_removed_and_unchanged() {
        let a = json!({"id": "a", "vin": "VR3A"});
        let b = json!({"id": "b", "vin": "VR3B"});
        check(&[], vec![a.clone()], &["added a"]);
        check(&[known("a", a.clone())], vec![a.clone()], &[]);
        check(
            &[known("a", a.clone())],
            vec![b.clone()],
            &["added b", "removed a"],
        );
        let mut gone = known("a", a.clone());
        gone.removed = true;
        check(&[gone.clone()], vec![a.clone()], &["added a"]);
        check(&[gone], vec![], &[]);
    }

    #[test]
    fn null_safe_leaves() {
        let k = [known(
            "a",
            json!({"id": "a", "label": "x", "n": 1, "o": {"p": true}}),
        )];
        check(
            &k,
            vec![json!({"id": "a", "n": 1, "o": {"p": true}})],
            &["changed a /label \"x\" -> -"],
        );
        check(
            &k,
            vec![json!({"id": "a", "label": null, "n": 1, "o": {"p": true}})],
            &["changed a /label \"x\" -> null"],
        );
        check(
            &k,
            vec![json!({"id": "a", "label": "x", "n": "1", "o": {"p": true}})],
            &["changed a /n 1 -> \"1\""],
        );
        check(
            &k,
            vec![json!({"id": "a", "label": "x", "n": 1, "o": {"p": true}, "new": []})],
            &["changed a /new - -> []"],
        );
        check(
            &k,
            vec![json!({"id": "a", "label": "x", "n": 1, "o": "flat"})],
            &["changed a /o {\"p\":true} -> \"flat\""],
        );
        check(
            &k,
            vec![json!({"id": "a", "label": "x", "n": 1.0, "o": {"p": true}})],
            &["changed a /n 1 -> 1.0"],
        );
    }

    #[test]
    fn arrays_by_position_and_key_order_ignored() {
        let k = [known(
            "a",
            json!({"id": "a", "pictures": ["p1", "p2"], "x": 1, "y": 2}),
        )];
        check(
            &k,
            vec![json!({"y": 2, "x": 1, "id": "a", "pictures": ["p1", "p2"]})],
            &[],
        );
        check(
            &k,
            vec![json!({"id": "a", "pictures": ["p2", "p1"], "x": 1, "y": 2})],
            &[
                "changed a /pictures/0 \"p1\" -> \"p2\"",
                "changed a /pictures/1 \"p2\" -> \"p1\"",
            ],
        );
        check(
            &k,
            vec![json!({"id": "a", "pictures": ["p1"], "x": 1, "y": 2})],
            &["changed a /pictures/1 \"p2\" -> -"],
        );
    }

    #[test]
    fn pointer_escaping() {
        let k = [known("a", json!({"id": "a", "a/b": {"c~d": 1}}))];
        check(
            &k,
            vec![json!({"id": "a", "a/b": {"c~d": 2}})],
            &["changed a /a~1b/c~0d 1 -> 2"],
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "[a-z]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c/~]{1,3}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Applies leaf changes to `old` and checks the result equals `new` (the diff is exact).
        fn apply(old: &Value, changes: &[Change]) -> Value {
            let mut v = old.clone();
            for c in changes {
                let ptr = c.field.clone().unwrap_or_default();
                match &c.new {
                    Some(n) => set(&mut v, &ptr, n.clone()),
                    None => remove(&mut v, &ptr),
                }
            }
            v
        }

        fn segs(ptr: &str) -> Vec<String> {
            ptr.split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect()
        }

        fn set(root: &mut Value, ptr: &str, val: Value) {
            let s = segs(ptr);
            let mut cur = root;
            for (i, seg) in s.iter().enumerate() {
                let last = i + 1 == s.len();
                cur = match cur {
                    Value::Object(m) => {
                        if last {
                            m.insert(seg.clone(), val);
                            return;
                        }
                        m.get_mut(seg).unwrap()
                    }
                    Value::Array(a) => {
                        let idx: usize = seg.parse().unwrap();
                        if last {
                            if idx < a.len() {
                                a[idx] = val;
                            } else {
                                a.push(val);
                            }
                            return;
                        }
                        &mut a[idx]
                    }
                    _ => unreachable!(),
                };
            }
            *cur = val;
        }

        fn remove(root: &mut Value, ptr: &str) {
            let s = segs(ptr);
            let mut cur = root;
            for (i, seg) in s.iter().enumerate() {
                let last = i + 1 == s.len();
                cur = match cur {
                    Value::Object(m) => {
                        if last {
                            m.remove(seg);
                            return;
                        }
                        m.get_mut(seg).unwrap()
                    }
                    Value::Array(a) => {
                        let idx: usize = seg.parse().unwrap();
                        if last {
                            a.truncate(idx);
                            return;
                        }
                        &mut a[idx]
                    }
                    _ => unreachable!(),
                };
            }
        }

        proptest! {
            #[test]
            fn equal_snapshots_have_no_changes(v in json_value()) {
                let doc = json!({"id": "a", "d": v});
                let k = [known("a", doc.clone())];
                prop_assert!(diff(&k, &CompleteListing::assume_complete(&[doc])).is_empty());
            }

            #[test]
            fn applying_the_changes_reproduces_the_new_value(a in json_value(), b in json_value()) {
                let old = json!({"id": "a", "d": a});
                let new = json!({"id": "a", "d": b});
                let changes = diff(&[known("a", old.clone())], &CompleteListing::assume_complete(std::slice::from_ref(&new)));
                // Array truncations are applied from the highest index down.
                let mut sorted = changes.clone();
                sorted.sort_by_key(|c| std::cmp::Reverse(c.new.is_none()));
                let removals: Vec<_> = sorted.iter().filter(|c| c.new.is_none()).cloned().rev().collect();
                let sets: Vec<_> = sorted.iter().filter(|c| c.new.is_some()).cloned().collect();
                let mut rebuilt = apply(&old, &sets);
                let mut removals = removals;
                removals.sort_by(|x, y| y.field.cmp(&x.field));
                rebuilt = apply(&rebuilt, &removals);
                prop_assert_eq!(rebuilt, new);
            }
        }
    }
}
