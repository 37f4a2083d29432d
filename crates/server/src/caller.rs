//! Who is calling and what they may do: the [`Caller`] (open gateway, static key, virtual key),
//! the [`Payer`] the ledger bills, the request's data class, and which routes and deployments
//! the caller may reach.
//!
//! Depends on config and governance only.

use axum::http::HeaderMap;
use relais_core::Error;
use relais_governance::{Access, Holder, Limits, Subject};
use relais_router::Deployment;

use crate::config::ClientKey;
use crate::http::header_str;

/// Who is calling.
pub(crate) enum Caller<'a> {
    /// No key is configured or issued: the gateway is open.
    Open,
    /// A key from `[auth] keys`.
    Static(&'a ClientKey),
    /// A virtual key from the governance store.
    Virtual(Access),
}

/// Who pays for a request, as the ledger names them: the key (a static key by its config
/// name, a virtual key by its id) and the key's team.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Payer<'a> {
    pub key: Option<&'a str>,
    pub team: Option<&'a str>,
}

/// A [`Payer`] that outlives the request (a shadow copy bills the same payer later).
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnedPayer {
    pub key: Option<String>,
    pub team: Option<String>,
}

impl Payer<'_> {
    pub(crate) fn to_owned(self) -> OwnedPayer {
        OwnedPayer {
            key: self.key.map(str::to_owned),
            team: self.team.map(str::to_owned),
        }
    }
}

impl OwnedPayer {
    pub(crate) fn borrow(&self) -> Payer<'_> {
        Payer {
            key: self.key.as_deref(),
            team: self.team.as_deref(),
        }
    }
}

impl Caller<'_> {
    /// Who pays, for the ledger.
    pub(crate) fn payer(&self) -> Payer<'_> {
        match self {
            Self::Open => Payer::default(),
            Self::Static(k) => Payer {
                key: Some(&k.name),
                team: None,
            },
            Self::Virtual(a) => Payer {
                key: Some(&a.key.id),
                team: Some(&a.team.id),
            },
        }
    }

    /// The key and its team as subjects of admission, when either has a limit or a budget.
    pub(crate) fn subjects(&self) -> Option<[Subject<'_>; 2]> {
        let Self::Virtual(access) = self else {
            return None;
        };
        let (k, t) = (&access.key, &access.team);
        if k.limits == Limits::default() && t.limits == Limits::default() {
            return None;
        }
        // Key and team ids are distinct by their prefixes (key_..., team_...).
        Some([
            (
                k.id.as_str(),
                Holder::Key {
                    name: &k.name,
                    prefix: &k.prefix,
                },
                k.limits,
            ),
            (t.id.as_str(), Holder::Team { name: &t.name }, t.limits),
        ])
    }

    /// The data class of the request (`x-relais-data-class`, else the key's default), checked
    /// against what the key may send.
    pub(crate) fn data_class<'h>(
        &'h self,
        headers: &'h HeaderMap,
    ) -> Result<Option<&'h str>, Error> {
        let declared = header_str(headers, "x-relais-data-class");
        match self {
            Self::Virtual(a) => a.data_class(declared),
            _ => Ok(declared),
        }
    }

    /// The guardrail policies of the caller's key and team, as (class, action) pairs.
    pub(crate) fn guardrails(&self) -> impl Iterator<Item = (&str, &str)> {
        let lists = match self {
            Self::Virtual(a) => [
                a.key.reach.guardrails.as_ref(),
                a.team.reach.guardrails.as_ref(),
            ],
            _ => [None, None],
        };
        lists
            .into_iter()
            .flatten()
            .flat_map(|m| m.iter().map(|(c, a)| (c.as_str(), a.as_str())))
    }

    /// Whether this caller's request of data class `class` may go to deployment `d`.
    pub(crate) fn may_use(&self, d: &Deployment, class: Option<&str>) -> bool {
        d.accepts_class(class)
            && match self {
                Self::Virtual(a) => a.allows_vendor(&d.vendor),
                _ => true,
            }
    }

    /// Whether a policy applies at all (so the router need not call a filter that passes all).
    pub(crate) fn restricts(&self, class: Option<&str>) -> bool {
        class.is_some()
            || matches!(self, Self::Virtual(a) if a.key.reach.vendors.is_some() || a.team.reach.vendors.is_some())
    }

    /// Whether the caller may use route `route`.
    pub(crate) fn allows(&self, route: &str) -> bool {
        match self {
            Self::Open => true,
            Self::Static(k) => k
                .routes
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|r| r == route)),
            Self::Virtual(access) => access.allows_route(route),
        }
    }
}
