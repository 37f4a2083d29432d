use std::time::Duration;

/// Who failed. Decides whether an error is the client's to fix, a vendor's, or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request as sent by the client is wrong (bad JSON, unknown route, bad key).
    Client,
    /// A vendor failed or refused.
    Upstream,
    /// relais itself failed (a bug, shutdown, no deployment left).
    Gateway,
}

/// Whether trying again (here or on another deployment) can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    No,
    Yes,
    After(Duration),
}

/// The class of an error; the router decides failover by class, dialects decide status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    BadRequest,
    Auth,
    PermissionDenied,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    /// A key's or team's USD budget would be passed (402).
    BudgetExceeded,
    Overloaded,
    Timeout,
    Connect,
    Server,
    ContextWindowExceeded,
    ContentFiltered,
    Unsupported,
    /// The upstream answered with something we could not decode.
    Protocol,
    /// The gateway is draining for shutdown.
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
        Self::BadRequest,
        Self::Auth,
        Self::PermissionDenied,
        Self::NotFound,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::BudgetExceeded,
        Self::Overloaded,
        Self::Timeout,
        Self::Connect,
        Self::Server,
        Self::ContextWindowExceeded,
        Self::ContentFiltered,
        Self::Unsupported,
        Self::Protocol,
        Self::Unavailable,
        Self::Internal,
    ];

    /// Stable snake_case name, used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Auth => "auth",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Server => "server",
            Self::ContextWindowExceeded => "context_window_exceeded",
            Self::ContentFiltered => "content_filtered",
            Self::Unsupported => "unsupported",
            Self::Protocol => "protocol",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Every failure in relais: what kind, who failed, whether to retry, and what the vendor said
/// (already redacted). Dialects render it in their own error shape; nothing else formats it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind:?} ({side:?}): {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub side: Side,
    pub retry: Retry,
    /// HTTP status the vendor answered with, when the error came from one.
    pub upstream_status: Option<u16>,
    /// Human-readable, safe to show to the client: never holds a secret.
    pub message: String,
    /// Machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<String>,
    /// The request field at fault, when known.
    pub param: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, side: Side, message: impl Into<String>) -> Self {
        let retry = match kind {
            ErrorKind::RateLimited
            | ErrorKind::Overloaded
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::Server => Retry::Yes,
            _ => Retry::No,
        };
        Self {
            kind,
            side,
            retry,
            upstream_status: None,
            message: message.into(),
            code: None,
            param: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, Side::Client, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, Side::Client, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, Side::Gateway, message)
    }

    pub fn upstream(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(kind, Side::Upstream, message)
    }

    /// Undecodable upstream output, retryable (before the first event reached the client,
    /// another deployment can still answer). The message is clipped to
    /// [`Error::MAX_PROTOCOL_MESSAGE`]: a decoder's message may quote what the upstream sent
    /// (serde quotes a value of the wrong type whole), and an upstream may send anything.
    pub fn protocol(message: impl Into<String>) -> Self {
        let mut message = message.into();
        crate::clip(&mut message, Self::MAX_PROTOCOL_MESSAGE);
        Self::upstream(ErrorKind::Protocol, message).with_retry(Retry::Yes)
    }

    /// Longest message of a protocol error.
    pub const MAX_PROTOCOL_MESSAGE: usize = 512;

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Whether another attempt (on this or another deployment) may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self.retry, Retry::No)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.retry {
            Retry::After(d) => Some(d),
            _ => None,
        }
    }
}
