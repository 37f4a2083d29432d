use relais_core::EnvString;
use serde::Deserialize;

/// `type = "local"`: the built-in model, run inside the gateway process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Path of a GGUF chat model.
    pub model_path: EnvString,
    /// Context window per concurrent sequence, in tokens (prompt + output).
    #[serde(default = "default_ctx")]
    pub context_tokens: u32,
    /// Sequences decoded together in one batch: concurrent requests served at once.
    #[serde(default = "default_slots")]
    pub parallel: u32,
    /// Requests allowed to wait for a free sequence; beyond it, 503 with `retry-after`.
    #[serde(default = "default_queue")]
    pub queue_depth: usize,
    /// CPU threads for inference. Default: all cores on machines with 2 or fewer, else cores - 1,
    /// leaving one for the HTTP side (llama.cpp's spinning threads collapse under contention).
    pub threads: Option<u32>,
    /// Layers offloaded to the GPU (builds with the `cuda` feature). Default: all when built with
    /// CUDA, none otherwise.
    pub gpu_layers: Option<u32>,
    /// Temperature when the request sets none.
    #[serde(default = "default_temperature")]
    pub default_temperature: f32,
    /// A Jinja chat template overriding the one in the GGUF file (needed for files without one).
    pub chat_template: Option<String>,
}

fn default_ctx() -> u32 {
    2048
}
fn default_slots() -> u32 {
    4
}
fn default_queue() -> usize {
    64
}
fn default_temperature() -> f32 {
    0.7
}

impl LocalConfig {
    pub(crate) fn threads(&self) -> i32 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = if cores > 2 { cores - 1 } else { cores };
        i32::try_from(self.threads.map_or(auto, |t| t as usize).max(1)).unwrap_or(1)
    }
}
