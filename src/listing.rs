//! The completeness rules of a vehicle listing, pure: pages go in one at a time
//! ([`ListingBuilder::push`]); out comes the next page to fetch, a [`CompleteListing`], or the
//! reason the listing cannot be trusted ([`Incomplete`]). No IO, no clock: each rule is a row of
//! the table test below.
//!
//! A listing is complete only when:
//! - every page carries `total` (required by the API in both the 2021 and the 2024 envelopes) and
//!   it never changes while paging;
//! - `currentPage`, where present, is the page number we are at, and `totalPage` stays the same,
//!   is never passed by a `next` link and matches the number of pages read;
//! - no vehicle id repeats, and the last page (no `next`) brings the count to `total`;
//! - no `next` link names a page already fetched, every page but the last holds at least one
//!   vehicle, and the number of pages stays within what `total` allows at the size the first page
//!   shows (a server whose `next` loops, or that claims a huge total one vehicle a page, cannot
//!   burn the quota: at most one request per vehicle, at most [`MAX_PAGES`]).
//!
//! The `pageSize` asked for is only the most a page may hold (the OpenAPI: "the maximum number of
//! results to return per page"): a page shorter than asked is not a sign of anything, so
//! completeness is judged from what the pages say and hold, never from the size asked for.
//!
//! A complete listing of several pages is still not one snapshot: see [`crate::diff`] for why a
//! removal it implies waits for the next listing.

use std::collections::HashSet;

use crate::api::model::{ListedVehicle, Page};
use crate::diff::CompleteListing;

/// The most pages any listing may have, whatever it claims (60 vehicles a page: 60,000 vehicles).
pub const MAX_PAGES: u32 = 1000;

/// Why a listing cannot be trusted (recorded as the run's `incomplete` error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Incomplete(pub String);

/// What to do after a page.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Fetch this `_links.next` href next.
    Next(String),
    /// Every page arrived and the totals agree.
    Done(CompleteListing),
}

/// Collects the pages of one listing.
#[derive(Debug, Default)]
pub struct ListingBuilder {
    /// The `pageSize` asked for (the most a page may hold), for the plausibility of `total`.
    page_size: u64,
    pages: u32,
    total: Option<u64>,
    total_pages: Option<u64>,
    vehicles: Vec<ListedVehicle>,
    ids: HashSet<String>,
    fetched: HashSet<String>,
}

impl ListingBuilder {
    /// A new listing whose first page is fetched from `first_url` with `pageSize = page_size`.
    pub fn new(first_url: &str, page_size: u32) -> ListingBuilder {
        let mut b = ListingBuilder {
            page_size: u64::from(page_size.max(1)),
            ..ListingBuilder::default()
        };
        b.fetched.insert(page_key(first_url));
        b
    }

    /// The complete listing of an account without vehicles (the documented 404 "No vehicle
    /// found" on the first page).
    pub fn empty_account(&self) -> Result<CompleteListing, Incomplete> {
        if self.pages == 0 {
            Ok(CompleteListing::new(Vec::new(), true))
        } else {
            Err(Incomplete(format!(
                "page {} answered \"No vehicle found\" after {} vehicle(s)",
                self.pages + 1,
                self.vehicles.len()
            )))
        }
    }

    /// Takes the next page.
    pub fn push(&mut self, page: Page) -> Result<Step, Incomplete> {
        self.pages += 1;
        let n = self.pages;
        let bad = |m: String| Err(Incomplete(m));
        let Some(total) = page.total else {
            return bad(format!(
                "page {n} has no `total`; the listing cannot be proved complete"
            ));
        };
        match self.total {
            Some(t) if t != total => {
                return bad(format!(
                    "the total changed from {t} to {total} while paging (the list changed)"
                ));
            }
            _ => self.total = Some(total),
        }
        if let Some(c) = page.current_page
            && c != u64::from(n)
        {
            return bad(format!("page {n} says it is page {c}"));
        }
        match (self.total_pages, page.total_pages) {
            (Some(a), Some(b)) if a != b => {
                return bad(format!("totalPage changed from {a} to {b} while paging"));
            }
            (None, Some(b)) => {
                if b > u64::from(MAX_PAGES) {
                    return bad(format!("totalPage says {b} pages: more than {MAX_PAGES}"));
                }
                self.total_pages = Some(b);
            }
            _ => {}
        }
        if n == 1 && total.div_ceil(self.page_size) > u64::from(MAX_PAGES) {
            return bad(format!(
                "total says {total} vehicles: more than {MAX_PAGES} pages of {}",
                self.page_size
            ));
        }
        let on_page = page.vehicles.len() as u64;
        for v in page.vehicles {
            if !self.ids.insert(v.id.clone()) {
                return bad(format!(
                    "vehicle {} listed twice (the list changed while paging)",
                    v.id.chars().take(12).collect::<String>()
                ));
            }
            self.vehicles.push(v);
        }
        let count = self.vehicles.len() as u64;
        if count > total {
            return bad(format!("{count} vehicles arrived but total says {total}"));
        }
        if page.next.is_some() {
            // Every page but the last brings at least one vehicle, so a listing costs at most one
            // request per vehicle (plus an empty last page); a total the server's own page size
            // cannot deliver within MAX_PAGES is refused at the first page, before it costs more.
            if on_page == 0 {
                return bad(format!("page {n} holds no vehicles and is not the last"));
            }
            if n == 1 && total.div_ceil(on_page) > u64::from(MAX_PAGES) {
                return bad(format!(
                    "total says {total} vehicles at {on_page} a page: more than {MAX_PAGES} pages"
                ));
            }
            if let Some(tp) = self.total_pages
                && u64::from(n) >= tp
            {
                return bad(format!(
                    "page {n} of {tp} (totalPage) links to another page"
                ));
            }
        }
        let Some(href) = page.next else {
            if count != total {
                return bad(format!("total says {total} vehicles but {count} arrived"));
            }
            if let Some(tp) = self.total_pages
                && tp != u64::from(n)
                && !(tp == 1 && n == 1)
            {
                return bad(format!(
                    "totalPage says {tp} pages but the listing ended after {n}"
                ));
            }
            let vehicles = std::mem::take(&mut self.vehicles);
            return Ok(Step::Done(CompleteListing::new(vehicles, n == 1)));
        };
        if !self.fetched.insert(page_key(&href)) {
            return bad(format!(
                "page {n}'s `next` link names a page already fetched"
            ));
        }
        if n >= self.max_pages() {
            return bad(format!(
                "more than {} pages for {total} vehicles",
                self.max_pages()
            ));
        }
        Ok(Step::Next(href))
    }

    /// Pages `total` allows when every page but the last holds at least one vehicle (plus one
    /// for an empty last page), at most [`MAX_PAGES`].
    fn max_pages(&self) -> u32 {
        let allowed = self.total.unwrap_or(0).saturating_add(1);
        u32::try_from(allowed).unwrap_or(MAX_PAGES).min(MAX_PAGES)
    }
}

/// What identifies a page: its `pageToken` when the link has one (the 2024+ form), else the
/// whole link with the query in a canonical order.
fn page_key(href: &str) -> String {
    let query = href.split_once('?').map_or("", |(_, q)| q);
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "client_id")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some((_, token)) = pairs.iter().find(|(k, _)| k == "pageToken") {
        return format!("pageToken={token}");
    }
    pairs.sort();
    let path = href.split('?').next().unwrap_or(href);
    let path = path.rsplit_once("/user/").map_or(path, |(_, p)| p);
    format!("{path}?{pairs:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(total: Option<u64>, ids: &[&str], next: Option<&str>) -> Page {
        Page {
            total,
            total_pages: None,
            current_page: None,
            next: next.map(str::to_owned),
            vehicles: ids
                .iter()
                .filter_map(|id| ListedVehicle::from_value(&json!({"id": id})))
                .collect(),
        }
    }

    /// Feeds pages in order to a listing of `pageSize = 2`; renders the outcome as
    /// `done N single|multi`, or the error.
    fn run(pages: Vec<Page>) -> String {
        run_sized(pages, 2)
    }

    fn run_sized(pages: Vec<Page>, page_size: u32) -> String {
        let first = format!("https://api/x/user/vehicles?client_id=c&pageSize={page_size}");
        let mut b = ListingBuilder::new(&first, page_size);
        for p in pages {
            match b.push(p) {
                Ok(Step::Next(_)) => {}
                Ok(Step::Done(l)) => {
                    let kind = if l.single_page() { "single" } else { "multi" };
                    return format!("done {} {kind}", l.len());
                }
                Err(Incomplete(m)) => return format!("incomplete: {m}"),
            }
        }
        "unfinished".into()
    }

    #[test]
    fn the_completeness_table() {
        let n1 = Some("https://api/x/user/vehicles?pageToken=p2");
        let n2 = Some("https://api/x/user/vehicles?pageToken=p3");
        let cases: Vec<(&str, Vec<Page>, &str)> = vec![
            (
                "one page",
                vec![page(Some(2), &["a", "b"], None)],
                "done 2 single",
            ),
            (
                "two pages",
                vec![page(Some(3), &["a", "b"], n1), page(Some(3), &["c"], None)],
                "done 3 multi",
            ),
            // Item 6: no total means the listing cannot be proved complete.
            (
                "no total",
                vec![page(None, &["a"], None)],
                "incomplete: page 1 has no `total`; the listing cannot be proved complete",
            ),
            (
                "no total on page 2",
                vec![page(Some(3), &["a", "b"], n1), page(None, &["c"], None)],
                "incomplete: page 2 has no `total`; the listing cannot be proved complete",
            ),
            (
                "total changes",
                vec![page(Some(3), &["a", "b"], n1), page(Some(4), &["c"], None)],
                "incomplete: the total changed from 3 to 4 while paging (the list changed)",
            ),
            (
                "a repeat",
                vec![page(Some(3), &["a", "b"], n1), page(Some(3), &["b"], None)],
                "incomplete: vehicle b listed twice (the list changed while paging)",
            ),
            (
                "too few",
                vec![page(Some(3), &["a", "b"], None)],
                "incomplete: total says 3 vehicles but 2 arrived",
            ),
            (
                "too many",
                vec![page(Some(1), &["a", "b"], None)],
                "incomplete: 2 vehicles arrived but total says 1",
            ),
            // Item 7: a `next` that names a page already fetched.
            (
                "next loops on itself",
                vec![
                    page(Some(4), &["a", "b"], n1),
                    page(Some(4), &["c", "d"], n1),
                ],
                "incomplete: page 2's `next` link names a page already fetched",
            ),
            (
                "next back to page 1",
                vec![page(
                    Some(3),
                    &["a", "b"],
                    Some("https://api/x/user/vehicles?pageSize=2&client_id=c"),
                )],
                "incomplete: page 1's `next` link names a page already fetched",
            ),
            // Item 7: empty pages that keep linking onwards stop at what total allows.
            (
                "endless empty pages",
                vec![
                    page(Some(3), &["a", "b"], n1),
                    page(Some(3), &[], n2),
                    page(
                        Some(3),
                        &[],
                        Some("https://api/x/user/vehicles?pageToken=p4"),
                    ),
                ],
                "incomplete: page 2 holds no vehicles and is not the last",
            ),
            // Adversarial review: one vehicle a page with a big total; an absurd total. A total
            // that fits the pages the server sends is read to the end, at most one request per
            // vehicle (see "one a page with a total too big for that size").
            (
                "one a page",
                vec![
                    page(Some(3), &["a"], n1),
                    page(Some(3), &["b"], n2),
                    page(
                        Some(3),
                        &["c"],
                        Some("https://api/x/user/vehicles?pageToken=p4"),
                    ),
                    page(Some(3), &[], None),
                ],
                "done 3 multi",
            ),
            // Issue 22 defect 1: `pageSize` is the most a page may hold; a server may send fewer.
            (
                "pages shorter than asked",
                vec![
                    page(Some(3), &["a"], n1),
                    page(Some(3), &["b"], n2),
                    page(Some(3), &["c"], None),
                ],
                "done 3 multi",
            ),
            (
                "short pages that end early",
                vec![page(Some(3), &["a"], n1), page(Some(3), &["b"], None)],
                "incomplete: total says 3 vehicles but 2 arrived",
            ),
            (
                "short pages with a repeat",
                vec![page(Some(3), &["a"], n1), page(Some(3), &["a"], n2)],
                "incomplete: vehicle a listed twice (the list changed while paging)",
            ),
            (
                "one a page with a total too big for that size",
                vec![page(Some(1001), &["a"], n1)],
                "incomplete: total says 1001 vehicles at 1 a page: more than 1000 pages",
            ),
            (
                "absurd total",
                vec![page(Some(100_000), &["a", "b"], n1)],
                "incomplete: total says 100000 vehicles: more than 1000 pages of 2",
            ),
        ];
        for (name, pages, want) in cases {
            assert_eq!(run(pages), want, "{name}");
        }
    }

    #[test]
    fn page_numbers_are_cross_checked() {
        let mut p1 = page(
            Some(3),
            &["a", "b"],
            Some("https://api/x/user/vehicles?pageToken=p2"),
        );
        p1.current_page = Some(1);
        p1.total_pages = Some(2);
        let mut p2 = page(Some(3), &["c"], None);
        p2.current_page = Some(2);
        p2.total_pages = Some(2);
        assert_eq!(run(vec![p1.clone(), p2.clone()]), "done 3 multi");
        let mut wrong = p2.clone();
        wrong.current_page = Some(1);
        assert_eq!(
            run(vec![p1.clone(), wrong]),
            "incomplete: page 2 says it is page 1"
        );
        let mut short = p1.clone();
        short.next = None;
        short.vehicles.truncate(2);
        short.total = Some(2);
        assert_eq!(
            run(vec![short]),
            "incomplete: totalPage says 2 pages but the listing ended after 1"
        );
    }

    /// Issue 22 defect 1: three vehicles served two a page (`pageSize` asked: 60) with every
    /// number consistent is complete; the same pages with numbers that disagree are not.
    #[test]
    fn short_pages_are_judged_by_their_own_numbers() {
        let numbered = |total: u64, ids: &[&str], next: Option<&str>, current, pages| {
            let mut p = page(Some(total), ids, next);
            p.current_page = Some(current);
            p.total_pages = Some(pages);
            p
        };
        let n2 = Some("https://api/x/user/vehicles?pageToken=2");
        let n3 = Some("https://api/x/user/vehicles?pageToken=3");
        let cases: Vec<(&str, Vec<Page>, &str)> = vec![
            (
                "consistent",
                vec![
                    numbered(3, &["a", "b"], n2, 1, 2),
                    numbered(3, &["c"], None, 2, 2),
                ],
                "done 3 multi",
            ),
            (
                "total says 3, the pages hold 2 and end",
                vec![numbered(3, &["a", "b"], None, 1, 1)],
                "incomplete: total says 3 vehicles but 2 arrived",
            ),
            (
                "a next link past totalPage",
                vec![
                    numbered(3, &["a", "b"], n2, 1, 1),
                    numbered(3, &["c"], None, 2, 1),
                ],
                "incomplete: page 1 of 1 (totalPage) links to another page",
            ),
            (
                "fewer pages than totalPage",
                vec![
                    numbered(3, &["a", "b"], n2, 1, 3),
                    numbered(3, &["c"], None, 2, 3),
                ],
                "incomplete: totalPage says 3 pages but the listing ended after 2",
            ),
            (
                "an empty page in the middle",
                vec![
                    numbered(3, &["a", "b"], n2, 1, 3),
                    numbered(3, &[], n3, 2, 3),
                ],
                "incomplete: page 2 holds no vehicles and is not the last",
            ),
            (
                "an absurd totalPage",
                vec![numbered(3, &["a", "b"], n2, 1, 5000)],
                "incomplete: totalPage says 5000 pages: more than 1000",
            ),
        ];
        for (name, pages, want) in cases {
            assert_eq!(run_sized(pages, 60), want, "{name}");
        }
    }

    #[test]
    fn no_vehicle_found_is_an_empty_account_only_on_page_one() {
        let b = ListingBuilder::new("u", 2);
        assert!(
            b.empty_account()
                .is_ok_and(|l| l.is_empty() && l.single_page())
        );
        let mut b = ListingBuilder::new("u", 2);
        let _ = b.push(page(Some(3), &["a", "b"], Some("u?pageToken=2")));
        assert!(b.empty_account().is_err());
    }
}
