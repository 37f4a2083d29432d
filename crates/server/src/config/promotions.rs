//! Promotions applied to a parsed config, before it is built.

use std::collections::BTreeMap;

use super::ConfigError;
use super::raw::{DeploymentConfig, RawConfig};

/// Make each promoted deployment its route's primary (`promoted`: route name to deployment id,
/// `provider/model`). A deployment of the route moves to the front; a shadow-only backup moves
/// from the shadow list to the front, and the route's other deployments (the old primary
/// first) become the backups shadow traffic measures.
pub fn apply_promotions(
    raw: &mut RawConfig,
    promoted: &BTreeMap<String, String>,
    origin: &str,
) -> Result<(), ConfigError> {
    for (route, to) in promoted {
        let Some(rc) = raw.routes.get_mut(route) else {
            return Err(ConfigError(format!(
                "{origin}: promotion of '{to}' on route '{route}': the route is gone from the config"
            )));
        };
        let id = |d: &DeploymentConfig| format!("{}/{}", d.provider.get_ref(), d.model);
        if let Some(i) = rc.deployments.iter().position(|d| id(d) == *to) {
            let d = rc.deployments.remove(i);
            rc.deployments.insert(0, d);
            continue;
        }
        let from_shadow = rc.shadow.as_mut().and_then(|sc| {
            let list = sc.deployments.as_mut()?;
            let i = list.iter().position(|d| id(d) == *to)?;
            let d = list.remove(i);
            if list.is_empty() {
                sc.deployments = None;
            }
            Some(d)
        });
        match from_shadow {
            Some(d) => rc.deployments.insert(0, d),
            None => {
                return Err(ConfigError(format!(
                    "{origin}: promotion of '{to}' on route '{route}': no such deployment or shadow backup in the config"
                )));
            }
        }
    }
    Ok(())
}
