//! The config the mesh runs with when none is given: a small loopback-only demo mesh.

use crate::MeshConfig;

/// The default config as YAML, comments included, e.g. for `sockmesh config init` to write.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

/// [`DEFAULT_CONFIG_YAML`], parsed.
pub fn default_config() -> MeshConfig {
    // The text is compiled in and checked by the test below, so a failure here is a bug in
    // this crate, not bad input.
    crate::parse_config(DEFAULT_CONFIG_YAML).expect("DEFAULT_CONFIG_YAML is a valid config")
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{BackendSpec, LbPolicy};

    #[test]
    fn default_config_parses_and_is_loopback_only() {
        let cfg = crate::parse_config(DEFAULT_CONFIG_YAML).unwrap();
        assert_eq!(cfg, default_config());
        let mut addresses: Vec<IpAddr> = Vec::new();
        for service in &cfg.services {
            addresses.push(service.vip);
            addresses.extend(service.backends.iter().map(|b| b.addr.ip()));
        }
        assert_eq!(addresses.len(), 2 + 5);
        for ip in addresses {
            assert!(
                ip.is_loopback(),
                "{ip} in the default config is not loopback"
            );
        }
    }

    #[test]
    fn default_config_has_the_documented_services() {
        let cfg = default_config();
        let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api"]);

        let web = &cfg.services[0];
        assert_eq!(web.vip.to_string(), "127.100.0.1");
        assert_eq!(web.port, 8080);
        assert_eq!(web.lb, LbPolicy::WeightedRandom);
        assert_eq!(
            web.backends,
            [
                backend("127.0.0.2:18081", 1),
                backend("127.0.0.3:18081", 1),
                backend("127.0.0.4:18081", 2),
            ]
        );

        let api = &cfg.services[1];
        assert_eq!(api.vip.to_string(), "127.100.0.2");
        assert_eq!(api.port, 8080);
        assert_eq!(api.lb, LbPolicy::RoundRobin);
        assert_eq!(
            api.backends,
            [backend("127.0.0.5:18082", 1), backend("127.0.0.6:18082", 1)]
        );
    }

    fn backend(addr: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: addr.parse().unwrap(),
            weight,
            labels: Default::default(),
            zone: None,
        }
    }
}
