//! The IdP's token tables: access tokens, refresh tokens (with their login chain, absolute
//! lifetime and rotation state) and authorization codes, and the operations on them: issue a new
//! chain or pair, rotate a refresh token, revoke a chain or a user. Times are the simulator's
//! clock as an `Instant` (see `Inner::now`), so moving the clock expires tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefreshState {
    Live,
    Rotated,
    Revoked,
}

#[derive(Debug, Clone)]
pub(super) struct RefreshToken {
    pub user: usize,
    pub client_id: String,
    pub chain: u64,
    /// When the login that started this chain happened (absolute lifetime).
    pub born: Instant,
    pub state: RefreshState,
    pub rotated_at: Option<Instant>,
    pub scope: String,
}

#[derive(Debug, Clone)]
pub(super) struct AccessToken {
    pub user: usize,
    pub chain: u64,
    pub expires: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct AuthCode {
    pub user: usize,
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: Option<String>,
    pub scope: String,
    pub expires: Instant,
    pub used: bool,
}

/// Every token and code the IdP has issued.
#[derive(Debug, Default)]
pub(super) struct Tokens {
    pub access: HashMap<String, AccessToken>,
    pub refresh: HashMap<String, RefreshToken>,
    pub codes: HashMap<String, AuthCode>,
    next_chain: u64,
}

impl Tokens {
    /// Issues a fresh access + refresh token pair for a new login chain born at `now`.
    pub fn issue_chain(
        &mut self,
        user: usize,
        client_id: &str,
        scope: &str,
        now: Instant,
        access_ttl: Duration,
    ) -> (String, String) {
        self.next_chain += 1;
        let chain = self.next_chain;
        self.issue_pair(user, client_id, chain, now, scope, now, access_ttl)
    }

    /// Issues an access + refresh token pair in an existing chain.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_pair(
        &mut self,
        user: usize,
        client_id: &str,
        chain: u64,
        born: Instant,
        scope: &str,
        now: Instant,
        access_ttl: Duration,
    ) -> (String, String) {
        let access = uuid::Uuid::new_v4().to_string();
        let refresh = uuid::Uuid::new_v4().to_string();
        self.access.insert(
            access.clone(),
            AccessToken {
                user,
                chain,
                expires: now + access_ttl,
            },
        );
        self.refresh.insert(
            refresh.clone(),
            RefreshToken {
                user,
                client_id: client_id.to_owned(),
                chain,
                born,
                state: RefreshState::Live,
                rotated_at: None,
                scope: scope.to_owned(),
            },
        );
        (access, refresh)
    }

    /// Rotates out `presented` and every other live token of its chain (on a grace replay, the
    /// one issued after it), then issues the chain's next pair.
    pub fn rotate(
        &mut self,
        presented: &str,
        rt: &RefreshToken,
        client_id: &str,
        scope: &str,
        now: Instant,
        access_ttl: Duration,
    ) -> (String, String) {
        for t in self
            .refresh
            .values_mut()
            .filter(|t| t.chain == rt.chain && t.state == RefreshState::Live)
        {
            t.state = RefreshState::Rotated;
            t.rotated_at = Some(now);
        }
        if let Some(t) = self.refresh.get_mut(presented) {
            t.state = RefreshState::Rotated;
            t.rotated_at = t.rotated_at.or(Some(now));
        }
        self.issue_pair(
            rt.user, client_id, rt.chain, rt.born, scope, now, access_ttl,
        )
    }

    /// Revokes every token of user `u` server-side.
    pub fn revoke_user(&mut self, u: usize) {
        let chains: Vec<u64> = self
            .refresh
            .values()
            .filter(|t| t.user == u)
            .map(|t| t.chain)
            .collect();
        for c in chains {
            self.revoke_chain(c);
        }
    }

    /// Revokes one login chain: its refresh tokens and its access tokens.
    pub fn revoke_chain(&mut self, chain: u64) {
        for t in self.refresh.values_mut().filter(|t| t.chain == chain) {
            t.state = RefreshState::Revoked;
        }
        self.access.retain(|_, a| a.chain != chain);
    }

    /// Whether `token` is a live refresh token within its chain's absolute lifetime.
    pub fn refresh_is_live(&self, token: &str, now: Instant, refresh_ttl: Duration) -> bool {
        self.refresh
            .get(token)
            .is_some_and(|t| t.state == RefreshState::Live && now < t.born + refresh_ttl)
    }
}
