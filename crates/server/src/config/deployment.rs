//! What routes and shadow backups are both built from: one deployment from its config, the
//! capability check between a primary and a backup, and the number checks for durations and
//! shares. A leaf of the config: it uses no other part of it but the raw structs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use relais_core::{Capabilities, Price, Provider};
use relais_providers::ProviderConfig;
use relais_router::{Deployment, DeploymentLimits, Health};

use super::ConfigError;
use super::raw::DeploymentConfig;

/// Built providers by name, with the config each was built from.
pub(super) type Providers = BTreeMap<String, (ProviderConfig, Arc<dyn Provider>)>;

/// What `backup` lacks that `primary` has, in words.
pub(super) fn capability_loss(primary: &Capabilities, backup: &Capabilities) -> Vec<&'static str> {
    let mut lost = Vec::new();
    if primary.tools && !backup.tools {
        lost.push("tools");
    }
    if primary.images && !backup.images {
        lost.push("images");
    }
    if primary.json_schema && !backup.json_schema {
        lost.push("JSON schema output");
    }
    let window = |c: &Capabilities| c.context_window.map_or(u64::MAX, u64::from);
    if window(backup) < window(primary) {
        lost.push("the primary's context window");
    }
    let out = |c: &Capabilities| c.max_output_tokens.map_or(u64::MAX, u64::from);
    if out(backup) < out(primary) {
        lost.push("the primary's max output tokens");
    }
    lost
}

pub(super) fn secs(
    value: Option<f64>,
    default: Option<f64>,
    field: &str,
    origin: &str,
) -> Result<Option<Duration>, ConfigError> {
    match value.or(default) {
        None => Ok(None),
        Some(v) if v > 0.0 && v <= 86_400.0 => Ok(Some(Duration::from_secs_f64(v))),
        Some(_) => Err(ConfigError(format!(
            "{origin}: {field}: must be within (0, 86400] seconds"
        ))),
    }
}

pub(super) fn share(
    value: Option<f64>,
    default: f64,
    field: &str,
    origin: &str,
) -> Result<f64, ConfigError> {
    let v = value.unwrap_or(default);
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError(format!(
            "{origin}: {field}: must be within [0, 1]"
        )))
    }
}

/// One deployment from its config; `field` names it in errors and `health` gives the health
/// record of its id (kept across reloads).
pub(super) fn build_deployment(
    d: &DeploymentConfig,
    field: &str,
    providers: &Providers,
    prices: &BTreeMap<String, Price>,
    health: impl FnOnce(&str) -> Arc<Health>,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> ConfigError,
) -> Result<Deployment, ConfigError> {
    let pname = d.provider.get_ref();
    let (cfg, provider) = providers.get(pname).ok_or_else(|| {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        at(
            d.provider.span(),
            &format!("{field}.provider"),
            format!(
                "no provider named '{pname}' (defined: {})",
                known.join(", ")
            ),
        )
    })?;
    let id = format!("{pname}/{}", d.model);
    let base = provider.capabilities(&d.model);
    let capabilities = Capabilities {
        tools: d.tools.unwrap_or(base.tools),
        images: d.images.unwrap_or(base.images),
        json_schema: d.json_schema.unwrap_or(base.json_schema),
        context_window: d.context_window.or(base.context_window),
        max_output_tokens: d.max_output_tokens.or(base.max_output_tokens),
    };
    Ok(Deployment {
        health: health(&id),
        id,
        provider_name: pname.clone(),
        provider: provider.clone(),
        model: d.model.clone(),
        weight: d.weight.unwrap_or(1),
        capabilities,
        limits: DeploymentLimits {
            rpm: d.rpm,
            tpm: d.tpm,
            concurrent: d.max_concurrent,
        },
        // The built-in model costs nothing; others cost what the price table says.
        price: if cfg.is_free() {
            Some(Price::default())
        } else {
            prices.get(&d.model).copied()
        },
        vendor: d
            .vendor
            .clone()
            .unwrap_or_else(|| cfg.default_vendor(pname)),
        data_classes: d.data_classes.clone(),
    })
}
