//! The one HTTP client every provider shares: one connection pool per process.

use std::sync::OnceLock;
use std::time::Duration;

/// Pool-wide settings, from the server config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 512,
        }
    }
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// The shared client, built on first use with `settings` (later settings are ignored: a pool is
/// per process).
pub fn shared_client(settings: &HttpSettings) -> Result<reqwest::Client, String> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // rustls needs a process-wide crypto provider; ring builds fast and has no cmake step.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .user_agent(concat!("relais/", env!("CARGO_PKG_VERSION")))
        // Nagle plus delayed ACK adds ~40 ms to small writes under keep-alive.
        .tcp_nodelay(true)
        .connect_timeout(settings.connect_timeout)
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}
