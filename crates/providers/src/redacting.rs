//! The one place every vendor error passes on its way out of this crate. A vendor decides what
//! its error bodies say, so a hostile or careless one can echo our key in any field; whatever a
//! provider's own mapping kept, [`Redacting`] removes every configured secret verbatim and every
//! key-like token from the message, code and parameter of each error (before the first event,
//! in the stream, and from embeddings) before a router, client, log line, metric or ledger row
//! sees it.

use std::sync::Arc;

use futures_util::StreamExt;
use relais_core::{
    BoxFuture, Capabilities, ChatRequest, EmbedRequest, EmbedResponse, Error, EventStream,
    ModelInfo, Provider, Secret,
};

/// A provider whose errors are redacted with its own configured secrets.
pub(crate) struct Redacting {
    inner: Arc<dyn Provider>,
    secrets: Arc<[Secret]>,
}

impl Redacting {
    pub(crate) fn wrap(inner: Arc<dyn Provider>, secrets: Vec<Secret>) -> Arc<dyn Provider> {
        let secrets: Vec<Secret> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        Arc::new(Self {
            inner,
            secrets: secrets.into(),
        })
    }
}

fn clean(secrets: &[Secret], err: Error) -> Error {
    let refs: Vec<&Secret> = secrets.iter().collect();
    relais_core::redact_error(err, &refs)
}

impl Provider for Redacting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, Error>> {
        Box::pin(async move {
            match self.inner.chat(model, request).await {
                Ok(events) => {
                    let secrets = self.secrets.clone();
                    // Events pass untouched; only an error item is rewritten.
                    let events: EventStream =
                        Box::pin(events.map(move |item| item.map_err(|e| clean(&secrets, e))));
                    Ok(events)
                }
                Err(e) => Err(clean(&self.secrets, e)),
            }
        })
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
        Box::pin(async move {
            self.inner
                .embed(model, request)
                .await
                .map_err(|e| clean(&self.secrets, e))
        })
    }

    fn forwards_extra(&self, field: &str) -> bool {
        self.inner.forwards_extra(field)
    }

    fn speaks_responses(&self) -> bool {
        self.inner.speaks_responses()
    }

    fn capabilities(&self, model: &str) -> Capabilities {
        self.inner.capabilities(model)
    }

    fn model_info(&self, model: &str) -> ModelInfo {
        self.inner.model_info(model)
    }
}
