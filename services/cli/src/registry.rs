//! Connecting `cleave worker` and `cleave router` to the control plane when `--etcd` is given.

use std::sync::Arc;

use cleave_cluster::registry::{EtcdConfig, EtcdRegistry, KeyLayout, Registry};

use crate::args::RegistryArgs;
use crate::error::CliError;

/// The registry and key layout, or `None` without `--etcd`.
pub async fn connect(args: &RegistryArgs) -> Result<Option<(Arc<dyn Registry>, KeyLayout)>, CliError> {
    if args.etcd.is_empty() {
        return Ok(None);
    }
    let security = args.security.load()?;
    let mut config = EtcdConfig::new(args.etcd.clone());
    config.tls = security.tls;
    config.user = security.user;
    config.startup_wait = std::time::Duration::from_secs(args.etcd_startup_wait_secs);
    let registry = EtcdRegistry::connect(config).await?;
    Ok(Some((Arc::new(registry), KeyLayout::new(&args.etcd_prefix)?)))
}
