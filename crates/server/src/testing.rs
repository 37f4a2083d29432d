//! Helpers for the crate's unit tests: a gateway's state built from config text, with or
//! without a ledger in a directory of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::state::AppState;

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "relais-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The state of a gateway running `config` (no stores opened).
pub(crate) fn state(config: &str) -> Arc<AppState> {
    let raw = crate::config::parse(config, "t.toml").unwrap();
    let runtime = crate::config::build(&raw, config, "t.toml").unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    Arc::new(AppState::new(runtime, rx))
}

/// The state of a gateway running `config` with keys, limits and the ledger in SQLite in
/// `dir`.
pub(crate) async fn governed(config: &str, dir: &TempDir) -> Arc<AppState> {
    let text = format!(
        "{config}\n[governance]\nsqlite_path = \"{}\"\n",
        dir.path().join("relais.db").display()
    );
    let raw = crate::config::parse(&text, "t.toml").unwrap();
    let mut runtime = crate::config::build(&raw, &text, "t.toml").unwrap();
    crate::config::open_state(&raw, &mut runtime, "t.toml")
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    Arc::new(AppState::new(runtime, rx))
}
