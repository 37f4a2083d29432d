//! Virtual keys: `rk-` and 64 hex digits of randomness from the operating system. Only the
//! SHA-256 of a key is stored (with its first characters, to recognise it in a list), so a
//! stolen database holds nothing that authenticates: presenting the stored hash fails, because
//! the hash of the hash is not in the store.
//!
//! The [`KeyRing`] keeps every key and team in memory and answers from there; a key it does not
//! know (created by another instance a moment ago) is looked up in the store once and
//! remembered. A refresh reloads everything, which is how a revocation made elsewhere arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use relais_core::{Error, ErrorKind, Secret, Side, hex};
use relais_state::{KeyStore, Limits, Reach, StoreError, StoredKey, Team};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Every virtual key starts with this.
pub const KEY_PREFIX: &str = "rk-";
/// Random bytes in a key (256 bits).
const KEY_BYTES: usize = 32;
/// Characters of a key kept in the clear to recognise it: the prefix and 7 hex digits.
const SHOWN: usize = 10;

/// Lowercase hex SHA-256 of a presented key: what the store keeps.
pub fn hash_key(key: &str) -> String {
    hex(digest::digest(&digest::SHA256, key.as_bytes()).as_ref())
}

fn random_hex(n: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::internal("the operating system's random source failed"))?;
    Ok(hex(&buf))
}

/// Whether `s` has the shape of a virtual key, before any lookup.
fn looks_like_key(s: &str) -> bool {
    s.len() == KEY_PREFIX.len() + 2 * KEY_BYTES
        && s.starts_with(KEY_PREFIX)
        && s[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A key just issued: the secret (shown once, never stored) and what was stored.
pub struct IssuedKey {
    pub key: Secret,
    pub stored: StoredKey,
}

fn new_secret() -> Result<(Secret, String, String), Error> {
    let key = format!("{KEY_PREFIX}{}", random_hex(KEY_BYTES)?);
    let hash = hash_key(&key);
    let prefix = key[..SHOWN].to_owned();
    Ok((Secret::new(key), prefix, hash))
}

/// What a request presenting a virtual key may do.
#[derive(Debug, Clone)]
pub struct Access {
    pub key: Arc<StoredKey>,
    pub team: Arc<Team>,
}

fn within(list: &Option<Vec<String>>, item: &str) -> bool {
    list.as_ref().is_none_or(|l| l.iter().any(|r| r == item))
}

impl Access {
    /// Whether the key may use `route`: within its own list and its team's.
    pub fn allows_route(&self, route: &str) -> bool {
        within(&self.key.routes, route) && within(&self.team.routes, route)
    }

    /// Whether the key may send requests to `vendor`: within its own list and its team's.
    pub fn allows_vendor(&self, vendor: &str) -> bool {
        within(&self.key.reach.vendors, vendor) && within(&self.team.reach.vendors, vendor)
    }

    /// The data class of a request that declared `declared` (`x-relais-data-class`), or of one
    /// that declared none (the first class of the key's list, else of its team's); refused
    /// when the key may not send that class.
    pub fn data_class<'a>(&'a self, declared: Option<&'a str>) -> Result<Option<&'a str>, Error> {
        let first =
            |l: &'a Option<Vec<String>>| l.as_ref().and_then(|l| l.first()).map(String::as_str);
        let class = declared
            .or_else(|| first(&self.key.reach.data_classes))
            .or_else(|| first(&self.team.reach.data_classes));
        if let Some(c) = class {
            if !within(&self.key.reach.data_classes, c) || !within(&self.team.reach.data_classes, c)
            {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    Side::Client,
                    format!("this key may not send data of class '{c}'"),
                )
                .with_param("x-relais-data-class"));
            }
        }
        Ok(class)
    }
}

/// A key's list must be within its team's: the first item that is not, if any.
fn outside<'a>(team: &Option<Vec<String>>, key: &'a Option<Vec<String>>) -> Option<&'a String> {
    let (Some(t), Some(k)) = (team, key) else {
        return None;
    };
    k.iter().find(|x| !t.contains(x))
}

/// What a key is given: routes, limits and reach; never more than its team holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub routes: Option<Vec<String>>,
    pub limits: Limits,
    pub reach: Reach,
}

/// Refuse a grant beyond team `t`'s: a route, vendor or data class outside its lists, or a
/// limit above its own.
fn within_team(t: &Team, grant: &Grant) -> Result<(), Error> {
    for (what, field, extra) in [
        ("route", "routes", outside(&t.routes, &grant.routes)),
        (
            "vendor",
            "vendors",
            outside(&t.reach.vendors, &grant.reach.vendors),
        ),
        (
            "data class",
            "data_classes",
            outside(&t.reach.data_classes, &grant.reach.data_classes),
        ),
    ] {
        if let Some(extra) = extra {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                Side::Client,
                format!("{what} '{extra}' is not allowed to team '{}'", t.name),
            )
            .with_param(field));
        }
    }
    let show = |what: &str, v: u64| {
        if what.starts_with("budget") {
            crate::money::usd(v)
        } else {
            v.to_string()
        }
    };
    let (tl, kl) = (&t.limits, &grant.limits);
    for (what, team_limit, key_limit) in [
        ("rpm", tl.rpm, kl.rpm),
        ("tpm", tl.tpm, kl.tpm),
        ("max_concurrent", tl.max_concurrent, kl.max_concurrent),
        ("budget_day", tl.budget_day, kl.budget_day),
        ("budget_month", tl.budget_month, kl.budget_month),
        ("budget_total", tl.budget_total, kl.budget_total),
    ] {
        if let (Some(tl), Some(kl)) = (team_limit, key_limit) {
            if kl > tl {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    Side::Client,
                    format!(
                        "{what} {} is above team '{}''s {}",
                        show(what, kl),
                        t.name,
                        show(what, tl)
                    ),
                )
                .with_param(what));
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Cache {
    by_hash: HashMap<String, Arc<StoredKey>>,
    teams: HashMap<String, Arc<Team>>,
}

/// Keys and teams, in memory, backed by a store.
pub struct KeyRing {
    store: Arc<dyn KeyStore>,
    cache: RwLock<Cache>,
    /// Whether any key is active, kept with the cache so requests need not count.
    active: AtomicBool,
    /// Whether the last refresh reached the store (for `/readyz` and metrics).
    store_up: AtomicBool,
    /// Well-formed keys the store did not know, and how many misses this second: a flood of
    /// random `rk-` keys costs the store at most [`MISS_LOOKUPS_PER_SEC`] fruitless queries a
    /// second (plus [`CONCURRENT_LOOKUPS`] in flight), and a repeated bad key none.
    misses: Mutex<Misses>,
    /// Store lookups of uncached keys in flight at once. A burst of first uses of a key made on
    /// another instance waits its turn here (and finds the key cached by the first), never a 401.
    lookups: tokio::sync::Semaphore,
}

/// Store lookups a second that may find nothing. Past them, unknown keys are refused without a
/// query until the next second; a key made on another instance is found by a lookup then, or
/// by the next refresh (every `refresh_secs`).
pub const MISS_LOOKUPS_PER_SEC: u32 = 20;
/// Uncached keys looked up in the store at once.
const CONCURRENT_LOOKUPS: usize = 8;
/// Unknown key hashes remembered (until the next refresh); past it the set starts over.
const MAX_MISSES: usize = 65_536;

#[derive(Default)]
struct Misses {
    hashes: std::collections::HashSet<String>,
    window: Option<std::time::Instant>,
    /// Store lookups this second that found nothing.
    missed: u32,
}

impl Misses {
    /// Whether an uncached key may be looked up in the store now: not a known miss, and the
    /// second's misses not spent.
    fn may_look_up(&mut self, hash: &str) -> bool {
        if self.hashes.contains(hash) {
            return false;
        }
        let now = std::time::Instant::now();
        match self.window {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.missed = 0;
            }
        }
        self.missed < MISS_LOOKUPS_PER_SEC
    }

    fn missed(&mut self, hash: String) {
        self.missed += 1;
        if self.hashes.len() >= MAX_MISSES {
            self.hashes.clear();
        }
        self.hashes.insert(hash);
    }
}

fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::NotFound(what) => {
            Error::new(ErrorKind::NotFound, Side::Client, format!("no such {what}"))
        }
        StoreError::Conflict(what) => Error::bad_request(format!("conflict: {what}")),
        StoreError::Backend(msg) => Error::new(ErrorKind::Unavailable, Side::Gateway, msg),
    }
}

impl KeyRing {
    /// Load every key and team from `store`.
    pub async fn load(store: Arc<dyn KeyStore>) -> Result<Self, Error> {
        let ring = Self {
            store,
            cache: RwLock::new(Cache::default()),
            active: AtomicBool::new(false),
            store_up: AtomicBool::new(true),
            misses: Mutex::default(),
            lookups: tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS),
        };
        ring.refresh().await?;
        Ok(ring)
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Whether the last refresh reached the store. While it does not, the keys loaded last
    /// stay in force.
    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Reload everything from the store (revocations made by other instances arrive so).
    pub async fn refresh(&self) -> Result<(), Error> {
        let loaded = async {
            let teams = self.store.teams().await.map_err(store_error)?;
            let keys = self.store.keys().await.map_err(store_error)?;
            Ok::<_, Error>((teams, keys))
        }
        .await;
        self.store_up.store(loaded.is_ok(), Ordering::Relaxed);
        let (teams, keys) = loaded?;
        let cache = Cache {
            by_hash: keys
                .into_iter()
                .map(|k| (k.hash.clone(), Arc::new(k)))
                .collect(),
            teams: teams
                .into_iter()
                .map(|t| (t.id.clone(), Arc::new(t)))
                .collect(),
        };
        let active = cache.by_hash.values().any(|k| k.revoked_at.is_none());
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = cache;
        self.active.store(active, Ordering::Relaxed);
        // Everything the store holds is now cached: a key missed before may exist since.
        self.misses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hashes
            .clear();
        Ok(())
    }

    /// Whether any key is active: then requests without one are refused.
    pub fn has_active_keys(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn cached(&self, hash: &str) -> Option<(Arc<StoredKey>, Option<Arc<Team>>)> {
        let c = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let k = c.by_hash.get(hash)?.clone();
        let team = c.teams.get(&k.team_id).cloned();
        Some((k, team))
    }

    /// Check a presented key. `Ok(None)`: not a virtual key (the caller may try others);
    /// an error: a virtual key that does not authenticate (unknown or revoked).
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Access>, Error> {
        if !presented.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let invalid = || Error::new(ErrorKind::Auth, Side::Client, "invalid API key");
        // Malformed keys never reach the store: a flood of garbage costs no queries.
        if !looks_like_key(presented) {
            return Err(invalid());
        }
        let hash = hash_key(presented);
        let may_look_up = || {
            self.misses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .may_look_up(&hash)
        };
        let mut found = self.cached(&hash);
        let _turn = if found.is_none() {
            if !may_look_up() {
                return Err(invalid());
            }
            let turn = self.lookups.acquire().await.ok();
            // Found meanwhile by the lookup of another request for the same key?
            found = self.cached(&hash);
            if found.is_none() && !may_look_up() {
                return Err(invalid());
            }
            turn
        } else {
            None
        };
        let found = match found {
            Some(hit) => Some(hit),
            None => {
                // Created by another instance since the last refresh?
                match self.store.key_by_hash(&hash).await.map_err(store_error)? {
                    None => {
                        self.misses
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .missed(hash.clone());
                        None
                    }
                    Some(k) => {
                        if !self
                            .cache
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .teams
                            .contains_key(&k.team_id)
                        {
                            self.refresh().await?;
                        }
                        let k = Arc::new(k);
                        let mut c = self.cache.write().unwrap_or_else(PoisonError::into_inner);
                        c.by_hash.insert(hash.clone(), k.clone());
                        if k.revoked_at.is_none() {
                            self.active.store(true, Ordering::Relaxed);
                        }
                        let team = c.teams.get(&k.team_id).cloned();
                        Some((k, team))
                    }
                }
            }
        };
        let Some((key, team)) = found else {
            return Err(invalid());
        };
        if key.revoked_at.is_some() {
            return Err(Error::new(
                ErrorKind::Auth,
                Side::Client,
                "this API key has been revoked",
            ));
        }
        if key
            .expires_at
            .is_some_and(|at| at <= crate::calendar::unix_secs())
        {
            return Err(Error::new(
                ErrorKind::Auth,
                Side::Client,
                "this API key has expired",
            ));
        }
        let team = team.ok_or_else(|| Error::internal("a key's team is missing from the store"))?;
        Ok(Some(Access { key, team }))
    }

    pub async fn create_team(
        &self,
        name: &str,
        routes: Option<Vec<String>>,
        limits: Limits,
        reach: Reach,
    ) -> Result<Team, Error> {
        if name.trim().is_empty() {
            return Err(Error::bad_request("a team needs a name").with_param("name"));
        }
        let team = Team {
            id: format!("team_{}", random_hex(8)?),
            name: name.to_owned(),
            routes,
            created_at: crate::calendar::unix_secs(),
            limits,
            reach,
        };
        self.store.create_team(&team).await.map_err(store_error)?;
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .teams
            .insert(team.id.clone(), Arc::new(team.clone()));
        Ok(team)
    }

    pub async fn teams(&self) -> Result<Vec<Team>, Error> {
        self.store.teams().await.map_err(store_error)
    }

    pub async fn keys(&self) -> Result<Vec<StoredKey>, Error> {
        self.store.keys().await.map_err(store_error)
    }

    /// The team named `team`, or with that id.
    pub async fn team(&self, team: &str) -> Result<Team, Error> {
        let teams = self.store.teams().await.map_err(store_error)?;
        teams
            .into_iter()
            .find(|t| t.name == team || t.id == team)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    Side::Client,
                    format!("no team named '{team}'"),
                )
                .with_param("team")
            })
    }

    /// The key with this id, revoked or not.
    pub async fn key(&self, id: &str) -> Result<StoredKey, Error> {
        let keys = self.store.keys().await.map_err(store_error)?;
        keys.into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, Side::Client, format!("no key '{id}'")))
    }

    /// Issue a key for the team named (or with the id) `team`. A key can never be given more
    /// than its team holds: its routes must be within the team's, its limits no higher.
    pub async fn create_key(
        &self,
        team: &str,
        name: &str,
        grant: Grant,
        expires_at: Option<i64>,
    ) -> Result<IssuedKey, Error> {
        let t = self.team(team).await?;
        within_team(&t, &grant)?;
        let Grant {
            routes,
            limits,
            reach,
        } = grant;
        let routes = match (&t.routes, routes) {
            // Unrestricted key in a restricted team: it gets the team's list.
            (Some(tr), None) => Some(tr.clone()),
            (_, r) => r,
        };
        let (key, prefix, hash) = new_secret()?;
        let stored = StoredKey {
            id: format!("key_{}", random_hex(8)?),
            name: name.to_owned(),
            team_id: t.id.clone(),
            prefix,
            hash,
            routes,
            created_at: crate::calendar::unix_secs(),
            revoked_at: None,
            expires_at,
            limits,
            reach,
        };
        self.store.insert_key(&stored).await.map_err(store_error)?;
        {
            let mut c = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            c.teams.insert(t.id.clone(), Arc::new(t.clone()));
            c.by_hash
                .insert(stored.hash.clone(), Arc::new(stored.clone()));
        }
        self.active.store(true, Ordering::Relaxed);
        Ok(IssuedKey { key, stored })
    }

    /// Write a key's new name, routes, limits, reach, budget reset and expiry (held within its
    /// team as when it was issued); in force at once here, within a refresh on other instances.
    pub async fn update_key(&self, key: &StoredKey) -> Result<(), Error> {
        let t = self.team(&key.team_id).await?;
        within_team(
            &t,
            &Grant {
                routes: key.routes.clone(),
                limits: key.limits,
                reach: key.reach.clone(),
            },
        )?;
        self.store.update_key(key).await.map_err(store_error)?;
        self.refresh().await
    }

    /// Write a team's new name, routes, limits, reach and budget reset. Its keys stay as they
    /// are: a request must be within both the key's and the team's, so narrowing a team
    /// narrows its keys.
    pub async fn update_team(&self, team: &Team) -> Result<(), Error> {
        if team.name.trim().is_empty() {
            return Err(Error::bad_request("a team needs a name").with_param("name"));
        }
        self.store.update_team(team).await.map_err(store_error)?;
        self.refresh().await
    }

    /// Append an admin change to the audit log.
    pub async fn audit(&self, entry: &relais_state::AuditEntry) -> Result<(), Error> {
        self.store.put_audit(entry).await.map_err(store_error)
    }

    /// The newest `limit` audit entries before `before_ms`, newest first.
    pub async fn audit_log(
        &self,
        limit: u32,
        before_ms: Option<i64>,
    ) -> Result<Vec<relais_state::AuditEntry>, Error> {
        self.store
            .audit(limit, before_ms)
            .await
            .map_err(store_error)
    }

    /// Revoke a key: refused at once on this instance, within a refresh on others.
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        self.store
            .revoke_key(id, crate::calendar::unix_secs())
            .await
            .map_err(store_error)?;
        self.refresh().await
    }

    /// A new secret for a key; the old one stops working.
    pub async fn rotate_key(&self, id: &str) -> Result<IssuedKey, Error> {
        let (key, prefix, hash) = new_secret()?;
        self.store
            .rotate_key(id, &prefix, &hash)
            .await
            .map_err(store_error)?;
        self.refresh().await?;
        let stored = self
            .cached(&hash)
            .map(|(k, _)| (*k).clone())
            .ok_or_else(|| Error::internal("a rotated key vanished"))?;
        Ok(IssuedKey { key, stored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_shape_and_hash_to_sha256() {
        let (key, prefix, hash) = new_secret().unwrap();
        assert!(looks_like_key(key.expose()));
        assert!(key.expose().starts_with(&prefix));
        assert_eq!(hash, hash_key(key.expose()));
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (other, _, _) = new_secret().unwrap();
        assert_ne!(key.expose(), other.expose());
        assert!(!looks_like_key("rk-short"));
        assert!(!looks_like_key(&format!("rk-{}", "g".repeat(64))));
    }

    /// A store that counts lookups by hash.
    struct Counting {
        inner: relais_state::SqliteStore,
        lookups: std::sync::atomic::AtomicUsize,
    }

    type Fut<'a, T> = relais_core::BoxFuture<'a, Result<T, StoreError>>;

    impl KeyStore for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn create_team<'a>(&'a self, team: &'a Team) -> Fut<'a, ()> {
            self.inner.create_team(team)
        }
        fn teams(&self) -> Fut<'_, Vec<Team>> {
            self.inner.teams()
        }
        fn insert_key<'a>(&'a self, key: &'a StoredKey) -> Fut<'a, ()> {
            self.inner.insert_key(key)
        }
        fn keys(&self) -> Fut<'_, Vec<StoredKey>> {
            self.inner.keys()
        }
        fn key_by_hash<'a>(&'a self, hash: &'a str) -> Fut<'a, Option<StoredKey>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            self.inner.key_by_hash(hash)
        }
        fn revoke_key<'a>(&'a self, id: &'a str, at: i64) -> Fut<'a, ()> {
            self.inner.revoke_key(id, at)
        }
        fn rotate_key<'a>(&'a self, id: &'a str, prefix: &'a str, hash: &'a str) -> Fut<'a, ()> {
            self.inner.rotate_key(id, prefix, hash)
        }
        fn update_team<'a>(&'a self, team: &'a Team) -> Fut<'a, ()> {
            self.inner.update_team(team)
        }
        fn update_key<'a>(&'a self, key: &'a StoredKey) -> Fut<'a, ()> {
            self.inner.update_key(key)
        }
        fn put_audit<'a>(&'a self, e: &'a relais_state::AuditEntry) -> Fut<'a, ()> {
            self.inner.put_audit(e)
        }
        fn audit(&self, limit: u32, before: Option<i64>) -> Fut<'_, Vec<relais_state::AuditEntry>> {
            self.inner.audit(limit, before)
        }
    }

    #[tokio::test]
    async fn issue17_unknown_keys_cannot_flood_the_store() {
        let dir = std::env::temp_dir().join(format!("relais-keys-{}", random_hex(8).unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.db");
        let counting = Arc::new(Counting {
            inner: relais_state::SqliteStore::open(&path).await.unwrap(),
            lookups: std::sync::atomic::AtomicUsize::new(0),
        });
        let ring = KeyRing::load(counting.clone()).await.unwrap();
        ring.create_team("t", None, Limits::default(), Reach::default())
            .await
            .unwrap();
        // A key issued by another instance after this one loaded its cache.
        let elsewhere = KeyRing::load(Arc::new(
            relais_state::SqliteStore::open(&path).await.unwrap(),
        ))
        .await
        .unwrap();
        let issued = elsewhere
            .create_key("t", "k", Grant::default(), None)
            .await
            .unwrap();

        let started = std::time::Instant::now();
        for _ in 0..2000 {
            let (random, _, _) = new_secret().unwrap();
            assert!(ring.authenticate(random.expose()).await.is_err());
        }
        let seconds = started.elapsed().as_secs() + 1;
        let lookups = counting.lookups.load(Ordering::SeqCst);
        assert!(
            lookups <= MISS_LOOKUPS_PER_SEC as usize * usize::try_from(seconds).unwrap(),
            "{lookups} store lookups for 2000 random keys in {seconds} s"
        );
        // The same bad key again and again costs nothing.
        let (bad, _, _) = new_secret().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let before = counting.lookups.load(Ordering::SeqCst);
        for _ in 0..50 {
            assert!(ring.authenticate(bad.expose()).await.is_err());
        }
        assert_eq!(counting.lookups.load(Ordering::SeqCst), before + 1);
        // The key made elsewhere is still found by a lookup of its own.
        let found = ring.authenticate(issued.key.expose()).await.unwrap();
        assert_eq!(found.unwrap().key.id, issued.stored.id);
        let _ = std::fs::remove_dir_all(dir);
    }
}
