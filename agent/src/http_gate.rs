//! An agent that cannot serve http services (run with `--proxy off`, or `--observe false`:
//! without sock_ops no connection's origin reaches the proxy) refuses a config with one,
//! whole, like any config it cannot apply, and the previous config stays active. Routing
//! such a service in the kernel as if it were tcp would silently drop what the operator
//! asked for (request routes, retries, timeouts); refusing says so.

use sockmesh_model::{MeshConfig, Protocol};

/// `Err` naming the first http service's field when `config` has one; `why` says why this
/// agent cannot serve it.
pub(crate) fn refuse_http(config: &MeshConfig, why: &str) -> Result<(), String> {
    // One field compare per service: negligible next to fingerprinting the config.
    match config
        .services
        .iter()
        .position(|s| s.protocol == Protocol::Http)
    {
        Some(i) => Err(format!(
            "services[{i}].protocol: http needs the L7 proxy, and {why}, so this agent \
             cannot serve service {:?}",
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
        let err = refuse_http(&cfg, "this agent runs with --proxy off").unwrap_err();
        assert!(
            err.starts_with("services[1].protocol: http needs the L7 proxy"),
            "{err}"
        );
        assert!(
            err.contains("--proxy off") && err.contains("\"shop\""),
            "{err}"
        );
    }

    #[test]
    fn tcp_only_configs_pass() {
        let tcp = TWO.replace("    protocol: http\n", "    protocol: tcp\n");
        let cfg = sockmesh_model::parse_config(&tcp).unwrap();
        assert_eq!(refuse_http(&cfg, "x"), Ok(()));
        let embedded = sockmesh_model::parse_config(sockmesh_model::DEFAULT_CONFIG_YAML).unwrap();
        assert_eq!(refuse_http(&embedded, "x"), Ok(()));
    }
}
