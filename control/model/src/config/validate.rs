//! The rules a decoded config must follow before any node may load it.
//!
//! Each rule stops something the kernel would otherwise do wrong, silently: a VIP:port owned
//! by two services, a connection that cannot change address family mid-connect, a backend
//! that routes back into the mesh, a service that can never pick a backend.

use std::collections::hash_map::{Entry, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::route::check_zone;
use super::workload::check_labels;
use super::{
    ConfigError, MeshConfig, ServiceSpec, CONFIG_VERSION, MAX_BACKENDS_PER_SERVICE,
    MAX_BACKEND_PAIRS, MAX_SERVICES, MAX_SERVICE_NAME_LEN, MAX_WEIGHT,
};

impl MeshConfig {
    /// Checks every rule of the schema and returns the first one broken, in document order
    /// (services, then workloads).
    ///
    /// [`parse_config`](super::parse_config) already calls this; call it again on a config
    /// built or edited in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::invalid(
                "version",
                format!(
                    "unsupported version {} (this build reads version {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        if self.services.len() > MAX_SERVICES {
            return Err(ConfigError::invalid(
                "services",
                format!(
                    "{} services, more than the limit of {MAX_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        // Every VIP:port up front (first owner wins): a backend may point at a service that
        // comes later in the file, and that must be caught too.
        let mut vips = HashMap::with_capacity(self.services.len());
        for (i, service) in self.services.iter().enumerate() {
            vips.entry(service.vip_port()).or_insert(i);
        }
        let mut names = HashMap::with_capacity(self.services.len());
        let mut pairs = 0usize;
        for (i, service) in self.services.iter().enumerate() {
            // The mesh-wide budget of the kernel's per-pair tables, charged in file order, so
            // the error names the first service that does not fit (a source that builds the
            // config can leave that one out and keep the rest).
            pairs += service.backends.len();
            if pairs > MAX_BACKEND_PAIRS {
                return Err(ConfigError::invalid(
                    format!("services[{i}].backends"),
                    format!(
                        "services[0..={i}] list {pairs} backends together, more than the \
                         {MAX_BACKEND_PAIRS} (service, backend) pairs the kernel's tables hold \
                         (MAX_BACKEND_PAIRS)"
                    ),
                ));
            }
            let checker = ServiceChecker {
                index: i,
                service,
                // The first service that claims an address, when it is not this one.
                other_owner: |addr: SocketAddr| {
                    vips.get(&addr)
                        .filter(|&&first| first != i)
                        .map(|&first| (first, self.services[first].name.as_str()))
                },
            };
            checker.name(&mut names)?;
            checker.vip()?;
            checker.backends()?;
            checker.policy(&self.workloads)?;
        }
        super::workload::check_workloads(&self.workloads)
    }
}

impl ServiceSpec {
    pub(crate) fn vip_port(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }
}

/// The checks for one service, with what they need to know about the rest of the mesh.
pub(crate) struct ServiceChecker<'a, F> {
    /// Where the service is in the config (for the field paths of errors).
    pub index: usize,
    pub service: &'a ServiceSpec,
    /// The service (index, name) that claims a VIP:port, when it is another one than this.
    pub other_owner: F,
}

impl<'a, 'm, F: Fn(SocketAddr) -> Option<(usize, &'m str)>> ServiceChecker<'a, F> {
    /// The checks that depend on this service, the VIPs of the mesh and its workloads only:
    /// all but the uniqueness of its name.
    pub(crate) fn check_alone(&self, workloads: &[super::WorkloadSpec]) -> Result<(), ConfigError> {
        if let Err(reason) = check_name("service", &self.service.name) {
            return self.fail("name", reason);
        }
        self.vip()?;
        self.backends()?;
        self.policy(workloads)
    }

    /// Health policy ranges, allowed callers (names of configured workloads, valid selectors),
    /// SLOs, routes, locality and the http block.
    fn policy(&self, workloads: &[super::WorkloadSpec]) -> Result<(), ConfigError> {
        let s = self.service;
        if let Err((field, reason)) = super::policy::check(&s.outlier, &s.circuit, &s.limits) {
            return self.fail(&field, reason);
        }
        if let Some(callers) = &s.allowed_callers {
            if let Err((field, reason)) =
                super::caller::check_allowed_callers(callers, Some(workloads))
            {
                return self.fail(&field, reason);
            }
        }
        if let Err((field, reason)) =
            super::slo::check(&s.slos, s.protocol == super::Protocol::Http)
        {
            return self.fail(&field, reason);
        }
        if let Err((field, reason)) = super::route::check_routes(&s.routes) {
            return self.fail(&field, reason);
        }
        if let Some(locality) = &s.locality {
            if let Err((field, reason)) = super::route::check_locality(locality) {
                return self.fail(&field, reason);
            }
        }
        if let Err((field, reason)) = super::http::check(
            s.protocol,
            s.http.as_ref(),
            s.outlier.consecutive_5xx,
            &s.backends,
        ) {
            return self.fail(&field, reason);
        }
        Ok(())
    }

    fn fail(&self, field: &str, reason: String) -> Result<(), ConfigError> {
        Err(ConfigError::invalid(
            format!("services[{}].{field}", self.index),
            reason,
        ))
    }

    fn name(&self, names: &mut HashMap<&'a str, usize>) -> Result<(), ConfigError> {
        let name = self.service.name.as_str();
        if let Err(reason) = check_name("service", name) {
            return self.fail("name", reason);
        }
        match names.entry(name) {
            Entry::Occupied(first) => self.fail(
                "name",
                format!(
                    "duplicate service name {name:?}, already used by services[{}]",
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(self.index);
                Ok(())
            }
        }
    }

    fn vip(&self) -> Result<(), ConfigError> {
        let vip = self.service.vip;
        if let Some(kind) = non_unicast(vip) {
            return self.fail("vip", format!("{kind} {vip} cannot be a VIP"));
        }
        if self.service.port == 0 {
            return self.fail("port", "port 0 cannot be a VIP port".to_owned());
        }
        let vip_port = self.service.vip_port();
        match (self.other_owner)(vip_port) {
            Some((first, name)) => self.fail(
                "port",
                format!("duplicate VIP {vip_port}, already used by services[{first}] ({name})"),
            ),
            None => Ok(()),
        }
    }

    fn backends(&self) -> Result<(), ConfigError> {
        let backends = &self.service.backends;
        if backends.is_empty() {
            return self.fail(
                "backends",
                "no backends: a service needs at least one".to_owned(),
            );
        }
        if backends.len() > MAX_BACKENDS_PER_SERVICE {
            return self.fail(
                "backends",
                format!(
                    "{} backends, more than the limit of {MAX_BACKENDS_PER_SERVICE}",
                    backends.len()
                ),
            );
        }
        let mut seen = HashMap::with_capacity(backends.len());
        for (j, backend) in backends.iter().enumerate() {
            let addr_field = format!("backends[{j}].addr");
            if let Err(reason) = self.backend_addr(backend.addr) {
                return self.fail(&addr_field, reason);
            }
            if let Some(first) = seen.insert(backend.addr, j) {
                return self.fail(
                    &addr_field,
                    format!(
                        "duplicate backend {}, already listed as backends[{first}]",
                        backend.addr
                    ),
                );
            }
            if backend.weight > MAX_WEIGHT {
                return self.fail(
                    &format!("backends[{j}].weight"),
                    format!(
                        "weight {} is above the limit of {MAX_WEIGHT}",
                        backend.weight
                    ),
                );
            }
            let labels_field = format!("backends[{j}].labels");
            if let Err((field, reason)) = check_labels(&labels_field, &backend.labels) {
                return self.fail(&field, reason);
            }
            if let Some(zone) = &backend.zone {
                if let Err(reason) = check_zone(zone) {
                    return self.fail(&format!("backends[{j}].zone"), reason);
                }
            }
        }
        // u64: the sum cannot overflow whatever the weights, even before the limits hold.
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return self.fail(
                "backends",
                "total weight is 0: at least one backend needs a weight above 0".to_owned(),
            );
        }
        Ok(())
    }

    fn backend_addr(&self, addr: SocketAddr) -> Result<(), String> {
        if addr.port() == 0 {
            return Err(format!("port 0 in backend address {addr}"));
        }
        if let Some(kind) = non_unicast(addr.ip()) {
            return Err(format!("{kind} {} cannot be a backend", addr.ip()));
        }
        let vip = self.service.vip;
        if addr.is_ipv4() != vip.is_ipv4() {
            return Err(format!(
                "{} backend {addr} for {} VIP {vip}: a socket cannot change address family at connect",
                family(addr.ip()),
                family(vip),
            ));
        }
        if addr == self.service.vip_port() {
            return Err(format!(
                "routing loop: backend {addr} is this service's own VIP:port"
            ));
        }
        if let Some((other, name)) = (self.other_owner)(addr) {
            // The kernel rewrites a connection's destination once, at connect; a connection
            // sent to another VIP is not routed again and would reach no backend.
            return Err(format!(
                "backend {addr} is the VIP:port of services[{other}] ({name}); VIPs are not routed twice"
            ));
        }
        Ok(())
    }
}

/// Service and workload names end up as metric label values, Kubernetes object names and
/// CLI arguments, so they follow the DNS-label shape all of those accept (plus '.' and '_').
/// `kind` ("service", "workload") names the thing in the message.
pub(super) fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(format!("{kind} name must not be empty"));
    };
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner = |b: u8| edge(b) || matches!(b, b'-' | b'.' | b'_');
    if !(edge(first) && edge(last) && bytes.iter().all(|&b| inner(b))) {
        return Err(format!(
            "invalid {kind} name {name:?}: use lowercase letters, digits, '-', '.' and '_', \
             starting and ending with a letter or digit"
        ));
    }
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "{kind} name {name:?} is {} characters, more than the limit of {MAX_SERVICE_NAME_LEN}",
            name.len()
        ));
    }
    Ok(())
}

/// Why an address cannot carry a point-to-point TCP connection, if it cannot.
fn non_unicast(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast address")
    } else {
        None
    }
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}
