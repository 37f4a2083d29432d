//! `local`: the built-in model, a GGUF chat model run inside the gateway process by llama.cpp
//! (through the `llama-cpp-2` bindings), on CPU by default and on an NVIDIA GPU with the `cuda`
//! feature. With it a fresh install answers with no keys and no network, and in production it is
//! the last resort when every vendor is down.
//!
//! Inference runs on its own thread with a bounded queue (see `engine.rs`); this module turns
//! canonical requests into jobs and jobs' token channels into event streams. It must never block
//! a tokio worker.

mod config;
mod engine;
mod grammar;
mod template;

use std::sync::Arc;
use std::time::Duration;

use relais_core::{
    BoxFuture, Capabilities, ChatRequest, EmbedRequest, EmbedResponse, Error, ErrorKind,
    EventStream, ModelInfo, Provider, ResponseFormat, Retry, Side, StreamEvent,
};
use serde_json::Value;

pub use config::LocalConfig;

use engine::{Facts, Job, Sampling};
use template::ChatTemplate;

/// The built-in model as a provider.
pub struct Local {
    jobs: engine::Worker,
    facts: Facts,
    template: ChatTemplate,
    default_temperature: f32,
    context_tokens: u32,
}

/// Load the model named by `cfg` and start its inference thread. Errors name the file.
pub fn build(cfg: &LocalConfig) -> Result<Arc<dyn Provider>, String> {
    let (jobs, facts) = engine::spawn(cfg)?;
    let source = match cfg.chat_template.as_deref() {
        Some("gemma") => template::GEMMA.to_owned(),
        Some("chatml") => template::CHATML.to_owned(),
        Some(custom) => custom.to_owned(),
        None => facts.chat_template.clone().ok_or_else(|| {
            format!(
                "chat_template: {} has no chat template in its metadata; set chat_template to \"chatml\", \"gemma\" or a Jinja template",
                facts.file.display()
            )
        })?,
    };
    let template = ChatTemplate::new(source, facts.bos.clone(), facts.eos.clone())
        .map_err(|e| format!("chat_template: {e}"))?;
    Ok(Arc::new(Local {
        jobs,
        facts,
        template,
        default_temperature: cfg.default_temperature,
        context_tokens: cfg.context_tokens,
    }))
}

impl Local {
    fn sampling(&self, req: &ChatRequest) -> Result<Sampling, Error> {
        if !req.tools.is_empty() && req.tool_choice != Some(relais_core::ToolChoice::None) {
            return Err(
                Error::unsupported("the local model does not support tools").with_param("tools")
            );
        }
        let grammar = match &req.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(grammar::JSON_OBJECT.to_owned()),
            Some(ResponseFormat::JsonSchema { schema: None, .. }) => {
                Some(grammar::JSON_OBJECT.to_owned())
            }
            Some(ResponseFormat::JsonSchema {
                schema: Some(schema),
                ..
            }) => Some(schema_grammar(schema)?),
        };
        Ok(Sampling {
            max_tokens: req.max_output_tokens,
            temperature: req
                .temperature
                .map_or(self.default_temperature, |t| t as f32),
            top_p: req.top_p.map(|p| p as f32),
            top_k: req.top_k,
            // Seeds are 32-bit in llama.cpp; wider ones are folded, keeping them deterministic.
            seed: req.seed.map(|s| (s as u64 ^ ((s as u64) >> 32)) as u32),
            stop: req.stop.clone(),
            grammar,
        })
    }
}

fn schema_grammar(schema: &Value) -> Result<String, Error> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
        Error::unsupported(format!(
            "this JSON schema cannot be enforced by the local model's grammar sampler: {e}"
        ))
        .with_param("response_format.json_schema.schema")
    })
}

impl Provider for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn chat<'a>(
        &'a self,
        _model: &'a str,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<EventStream, Error>> {
        Box::pin(async move {
            let sampling = self.sampling(request)?;
            let prompt = self.template.render(request)?;
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            match self.jobs.try_send(Job {
                prompt,
                sampling,
                tx,
            }) {
                Ok(()) => {}
                Err(engine::Refused::Full) => {
                    return Err(Error::upstream(
                        ErrorKind::Overloaded,
                        "the local model's queue is full; retry shortly",
                    )
                    .with_retry(Retry::After(Duration::from_secs(1))));
                }
                Err(engine::Refused::Stopped) => {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        Side::Gateway,
                        "the local model's inference thread has stopped",
                    ));
                }
            }
            Ok(event_stream(rx))
        })
    }

    fn embed<'a>(
        &'a self,
        _model: &'a str,
        _request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, Error>> {
        Box::pin(async {
            Err(Error::unsupported(
                "the local chat model does not serve embeddings",
            ))
        })
    }

    fn capabilities(&self, _model: &str) -> Capabilities {
        // JSON schemas are served by grammar-constrained sampling; tools and images are not.
        Capabilities {
            tools: false,
            images: false,
            json_schema: true,
            context_window: Some(self.context_tokens),
            max_output_tokens: None,
        }
    }

    fn model_info(&self, _model: &str) -> ModelInfo {
        let f = &self.facts;
        let mut details = serde_json::Map::new();
        details.insert("architecture".into(), f.architecture.clone().into());
        details.insert("parameters".into(), f.parameters.into());
        details.insert("quantization".into(), f.quantization.clone().into());
        details.insert("trained_context_length".into(), f.trained_context.into());
        details.insert("file_bytes".into(), f.size_bytes.into());
        details.insert(
            "file".into(),
            f.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .into(),
        );
        ModelInfo {
            owned_by: "relais".to_owned(),
            context_length: Some(self.context_tokens),
            details,
        }
    }
}

/// The worker's token channel as an event stream. Dropping the stream drops the receiver, which
/// the worker notices at its next step and frees the sequence.
fn event_stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<StreamEvent, Error>>,
) -> EventStream {
    Box::pin(futures_util::stream::unfold(
        (rx, false),
        |(mut rx, finished)| async move {
            if finished {
                return None;
            }
            match rx.recv().await {
                Some(Ok(ev)) => {
                    let done = matches!(ev, StreamEvent::Finish(_));
                    Some((Ok(ev), (rx, done)))
                }
                Some(Err(e)) => Some((Err(e), (rx, true))),
                None => Some((
                    Err(Error::internal("the local model stopped before finishing")),
                    (rx, true),
                )),
            }
        },
    ))
}
