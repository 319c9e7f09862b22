//! Until the L7 proxy exists (issue 19), a config with a `protocol: http` service is refused
//! whole, like any config this agent cannot apply, and the previous config stays active.
//! Routing such a service in the kernel as if it were tcp would silently drop what the
//! operator asked for (request routes, retries, timeouts); refusing says so.
//!
//! Remove this module (and its two calls: `runtime::Reconcile::take`, `check`) when the proxy
//! serves http services.

use sockmesh_model::{MeshConfig, Protocol};

/// `Err` naming the first http service's field when `config` has one.
pub(crate) fn refuse_http(config: &MeshConfig) -> Result<(), String> {
    // One field compare per service: negligible next to fingerprinting the config.
    match config
        .services
        .iter()
        .position(|s| s.protocol == Protocol::Http)
    {
        Some(i) => Err(format!(
            "services[{i}].protocol: http needs the L7 proxy, which is not built yet \
             (issue 19), so this agent cannot serve service {:?}",
            config.services[i].name
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends: [{addr: 127.0.0.2:8081}]
  - name: shop
    vip: 127.100.0.2
    port: 80
    protocol: http
    backends: [{addr: 127.0.0.3:8081}]
";

    #[test]
    fn a_config_with_an_http_service_is_refused_naming_the_field() {
        let cfg = sockmesh_model::parse_config(TWO).expect("valid for the model");
        let err = refuse_http(&cfg).unwrap_err();
        assert!(
            err.starts_with("services[1].protocol: http needs the L7 proxy"),
            "{err}"
        );
        assert!(
            err.contains("issue 19") && err.contains("\"shop\""),
            "{err}"
        );
    }

    #[test]
    fn tcp_only_configs_pass() {
        let tcp = TWO.replace("    protocol: http\n", "    protocol: tcp\n");
        let cfg = sockmesh_model::parse_config(&tcp).unwrap();
        assert_eq!(refuse_http(&cfg), Ok(()));
        let embedded = sockmesh_model::parse_config(sockmesh_model::DEFAULT_CONFIG_YAML).unwrap();
        assert_eq!(refuse_http(&embedded), Ok(()));
    }
}
