//! Checks on deploy/'s Kubernetes objects that no schema validator makes: that the pieces
//! agree with each other (ports, Service names, the ServiceMonitors' selectors), that the
//! agent's pod keeps to its capabilities and wires its L7 proxy as the agent expects
//! ([`agent_pod`]), that the PrometheusRule is the rules file, that the
//! MeshPolicy CRD is a structural schema, and that the example MeshPolicy sets every field of
//! the CRD and is accepted by the mesh config model.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde_yaml::{Mapping, Value as Yaml};

use super::agent_pod;

/// The PrometheusRule generated from the rules file (both relative to the workspace root).
pub const PROMETHEUS_RULE: &str = "deploy/k8s/prometheusrule.yaml";
pub const RULES: &str = crate::deploy_check::RULES;
pub const CRD: &str = "deploy/k8s/crd-meshpolicy.yaml";
pub const EXAMPLE_POLICY: &str = "deploy/examples/meshpolicy.yaml";

const RULE_HEADER: &str = "\
# GENERATED from deploy/prometheus/sockmesh-rules.yaml by xtask: do not edit, edit that file.
# Regenerate: SOCKMESH_BLESS=1 cargo test -p xtask prometheus_rule
# (`cargo xtask test` fails while this file differs from what the rules file generates.)
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: sockmesh
  namespace: sockmesh-system
  labels:
    app.kubernetes.io/name: sockmesh
    app.kubernetes.io/part-of: sockmesh
spec:
";

/// The PrometheusRule for the rules file's text: its `groups:` onwards, comments and all,
/// indented under `spec:`. Text, not re-serialized YAML, so the rules read the same in both.
pub fn prometheus_rule(rules: &str) -> Result<String> {
    let start = rules
        .lines()
        .position(|l| l == "groups:")
        .context("no top-level `groups:` line")?;
    let mut out = String::from(RULE_HEADER);
    for line in rules.lines().skip(start) {
        if !line.trim().is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

/// The checked-in PrometheusRule is what the rules file generates, and carries its groups.
pub fn check_prometheus_rule(root: &Path) -> Result<()> {
    let rules = read(&root.join(RULES))?;
    let expected = prometheus_rule(&rules)?;
    let actual = read(&root.join(PROMETHEUS_RULE))?;
    ensure!(
        actual == expected,
        "{PROMETHEUS_RULE} is stale: it must be generated from {RULES}; regenerate it with \
         `SOCKMESH_BLESS=1 cargo test -p xtask prometheus_rule`"
    );
    let groups = |text: &str, at: &[&str]| -> Result<Yaml> {
        let doc: Yaml = serde_yaml::from_str(text)?;
        dig(&doc, at).cloned().context("no groups")
    };
    ensure!(
        groups(&actual, &["spec", "groups"])? == groups(&rules, &["groups"])?,
        "{PROMETHEUS_RULE}: spec.groups differ from {RULES}'s groups"
    );
    Ok(())
}

/// Cross-object checks on the rendered manifests.
pub fn check_objects(objects: &[Yaml]) -> Result<()> {
    let agent = find(objects, "DaemonSet", "sockmesh-agent")?;
    agent_pod::check_agent_security(agent).context("DaemonSet sockmesh-agent")?;
    check_agent_has_no_api_access(objects, agent)?;
    let control = find(objects, "Deployment", "sockmesh-control")?;
    check_metrics_ingress(objects)?;

    let agent_args = container_args(agent, "agent")?;
    let metrics = flag(&agent_args, "--metrics-addr")?;
    ensure!(
        metrics.ends_with(&format!(":{}", container_port(agent, "agent", "metrics")?)),
        "agent --metrics-addr={metrics} is not its `metrics` containerPort"
    );
    // --control=https://NAME.NAMESPACE.svc:PORT must be a Service port of that name.
    let url = flag(&agent_args, "--control")?;
    let (host, port) = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split_once(':'))
        .with_context(|| format!("agent --control={url} is not https://HOST:PORT"))?;
    let (name, namespace) = host
        .strip_suffix(".svc")
        .and_then(|h| h.split_once('.'))
        .with_context(|| format!("agent --control host {host} is not NAME.NAMESPACE.svc"))?;
    let service = find(objects, "Service", name)?;
    ensure!(
        str_at(service, &["metadata", "namespace"]) == Some(namespace),
        "Service {name} is not in namespace {namespace} (agent --control={url})"
    );
    let api_port = service_port(service, "api")?;
    ensure!(
        port == api_port.to_string(),
        "agent --control={url}: Service {name} serves `api` on {api_port}"
    );
    let control_args = container_args(control, "control")?;
    let listen = flag(&control_args, "--listen")?;
    ensure!(
        listen.ends_with(&format!(":{}", container_port(control, "control", "api")?)),
        "control --listen={listen} is not its `api` containerPort"
    );
    check_control_tls(agent, control)?;
    check_node_identity(objects, agent, control)?;
    agent_pod::check_proxy_wiring(objects, agent).context("DaemonSet sockmesh-agent")?;

    // Each ServiceMonitor's selector must pick Services that have its endpoint ports.
    find(objects, "ServiceMonitor", "sockmesh")?;
    for monitor in objects
        .iter()
        .filter(|o| str_at(o, &["kind"]) == Some("ServiceMonitor"))
    {
        let name = str_at(monitor, &["metadata", "name"]).unwrap_or("?");
        let selected =
            monitor_selects(objects, monitor).with_context(|| format!("ServiceMonitor {name}"))?;
        // The one for both components must select both Services.
        let wanted = if name == "sockmesh" { 2 } else { 1 };
        ensure!(
            selected.len() >= wanted,
            "ServiceMonitor {name} selects {} Services; expected at least {wanted}",
            selected.len()
        );
        for endpoint in seq(dig(monitor, &["spec", "endpoints"])) {
            let port =
                str_at(endpoint, &["port"]).context("a ServiceMonitor endpoint without port")?;
            for service in &selected {
                service_port(service, port).with_context(|| format!("ServiceMonitor {name}"))?;
            }
        }
    }
    Ok(())
}

/// The Services a ServiceMonitor's `matchLabels` selects.
fn monitor_selects<'a>(objects: &'a [Yaml], monitor: &Yaml) -> Result<Vec<&'a Yaml>> {
    let selector = dig(monitor, &["spec", "selector", "matchLabels"])
        .and_then(Yaml::as_mapping)
        .context("no spec.selector.matchLabels")?;
    Ok(objects
        .iter()
        .filter(|o| str_at(o, &["kind"]) == Some("Service"))
        .filter(|o| {
            let labels = dig(o, &["metadata", "labels"]).and_then(Yaml::as_mapping);
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect())
}

/// The agent never calls the API server: its pods mount no ServiceAccount token, and no
/// RoleBinding or ClusterRoleBinding grants its account anything.
fn check_agent_has_no_api_access(objects: &[Yaml], daemonset: &Yaml) -> Result<()> {
    let spec = dig(daemonset, &["spec", "template", "spec"]).context("no pod spec")?;
    ensure!(
        spec.get("automountServiceAccountToken") == Some(&Yaml::Bool(false)),
        "DaemonSet sockmesh-agent: automountServiceAccountToken must be false (the agent \
         never calls the API server)"
    );
    let account = str_at(spec, &["serviceAccountName"]).unwrap_or("default");
    for binding in objects.iter().filter(|o| {
        matches!(
            str_at(o, &["kind"]),
            Some("RoleBinding" | "ClusterRoleBinding")
        )
    }) {
        let bound = seq(binding.get("subjects")).any(|s| {
            str_at(s, &["kind"]) == Some("ServiceAccount") && str_at(s, &["name"]) == Some(account)
        });
        ensure!(
            !bound,
            "{} {} grants the agent's ServiceAccount {account} API access; the agent needs none",
            str_at(binding, &["kind"]).unwrap_or("?"),
            str_at(binding, &["metadata", "name"]).unwrap_or("?")
        );
    }
    Ok(())
}

/// The CRD's schemas are structural (what the API server demands of a v1 CRD): every node
/// has a type (but one marked `x-kubernetes-preserve-unknown-fields: true`, which may take
/// any value), no `$ref`, no logical junctors (`oneOf` and the like may not set types, so
/// they cannot express what this CRD needs), objects list properties or
/// additionalProperties (not both), arrays have items.
/// The control channel is TLS end to end: the control plane serves its certificate from
/// the Secret `sockmesh-control-tls`, the agents verify it with the CA from
/// `sockmesh-control-ca`, and neither side runs with `--insecure-plaintext`.
pub fn check_control_tls(agent: &Yaml, control: &Yaml) -> Result<()> {
    let agent_args = &container_args(agent, "agent")?;
    let control_args = &container_args(control, "control")?;
    for (who, args) in [("agent", agent_args), ("control", control_args)] {
        ensure!(
            !args.iter().any(|a| a == "--insecure-plaintext"),
            "{who} runs with --insecure-plaintext: the control channel must be TLS"
        );
    }
    for flag_name in ["--tls-cert", "--tls-key"] {
        let path = flag(control_args, flag_name)?;
        let source = mounted_from(control, "control", path)?;
        ensure!(
            source == ("secret", "sockmesh-control-tls".to_owned()),
            "control {flag_name}={path} comes from {source:?}, not the Secret sockmesh-control-tls"
        );
    }
    let ca = flag(agent_args, "--control-ca")?;
    let (kind, name) = mounted_from(agent, "agent", ca)?;
    ensure!(
        name == "sockmesh-control-ca" && (kind == "configMap" || kind == "secret"),
        "agent --control-ca={ca} comes from {kind} {name}, not sockmesh-control-ca"
    );
    Ok(())
}

/// Each agent authenticates as its node, never as the operator: its `--control-token-file`
/// is a projected ServiceAccount token for the audience the control plane reviews
/// (`--kube-token-review`, `--kube-token-audience`, default sockmesh-control), short-lived,
/// and the control plane's ClusterRole may create TokenReviews.
pub fn check_node_identity(objects: &[Yaml], agent: &Yaml, control: &Yaml) -> Result<()> {
    let agent_args = &container_args(agent, "agent")?;
    let control_args = &container_args(control, "control")?;
    ensure!(
        control_args.iter().any(|a| a == "--kube-token-review"),
        "control runs without --kube-token-review: agents would need a shared token"
    );
    let audience = flag(control_args, "--kube-token-audience").unwrap_or("sockmesh-control");
    let token = flag(agent_args, "--control-token-file")?;
    let (kind, minted_for) = mounted_from(agent, "agent", token)?;
    ensure!(
        (kind, minted_for.as_str()) == ("serviceAccountToken", audience),
        "agent --control-token-file={token} comes from {kind} {minted_for}, not a projected \
         ServiceAccount token for the audience {audience}: every agent would hold a token \
         that works beyond its node"
    );
    let role = find(objects, "ClusterRole", "sockmesh-control")?;
    let reviews = seq(role.get("rules")).any(|r| {
        let has = |key, want| seq(r.get(key)).any(|v| v.as_str() == Some(want));
        has("apiGroups", "authentication.k8s.io")
            && has("resources", "tokenreviews")
            && has("verbs", "create")
    });
    ensure!(
        reviews,
        "ClusterRole sockmesh-control cannot create tokenreviews (--kube-token-review)"
    );
    Ok(())
}

/// The volume source (`secret` or `configMap`, and its name) mounted where `path` lies in
/// `container` of `workload`.
fn mounted_from(
    workload: &Yaml,
    container_name: &str,
    path: &str,
) -> Result<(&'static str, String)> {
    let mount = seq(container(workload, container_name)?.get("volumeMounts"))
        .filter(|m| {
            str_at(m, &["mountPath"]).is_some_and(|dir| {
                path.strip_prefix(dir.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .filter_map(|m| str_at(m, &["name"]))
        .next()
        .with_context(|| format!("container {container_name}: nothing is mounted at {path}"))?;
    let volume = seq(dig(workload, &["spec", "template", "spec", "volumes"]))
        .find(|v| str_at(v, &["name"]) == Some(mount))
        .with_context(|| format!("container {container_name}: no volume {mount}"))?;
    if let Some(name) = str_at(volume, &["secret", "secretName"]) {
        return Ok(("secret", name.to_owned()));
    }
    if let Some(name) = str_at(volume, &["configMap", "name"]) {
        return Ok(("configMap", name.to_owned()));
    }
    // A projected ServiceAccount token: its audience, and at most an hour of validity.
    let file = path.rsplit('/').next().unwrap_or_default();
    if let Some(sa) = seq(dig(volume, &["projected", "sources"]))
        .filter_map(|src| src.get("serviceAccountToken"))
        .find(|sa| str_at(sa, &["path"]) == Some(file))
    {
        let ttl = sa.get("expirationSeconds").and_then(Yaml::as_u64);
        ensure!(
            ttl.is_some_and(|t| t <= 3600),
            "volume {mount}: the token for {path} lives {ttl:?} s; at most 3600"
        );
        let audience = str_at(sa, &["audience"]).unwrap_or("(the API server's)");
        return Ok(("serviceAccountToken", audience.to_owned()));
    }
    bail!("volume {mount} (for {path}) is neither a Secret, a ConfigMap nor a projected token")
}

/// Both NetworkPolicies exist, and every ingress rule that opens a `metrics` (or the
/// proxy's `proxy-metrics`) port names who may come, narrower than every pod: per-backend
/// series and the exporter's connections are for Prometheus, not for every pod in the
/// cluster.
pub fn check_metrics_ingress(objects: &[Yaml]) -> Result<()> {
    for name in ["sockmesh-agent", "sockmesh-control"] {
        let policy = find(objects, "NetworkPolicy", name)?;
        let mut opened = false;
        for rule in seq(dig(policy, &["spec", "ingress"])) {
            for port in seq(dig(rule, &["ports"])).filter_map(|p| str_at(p, &["port"])) {
                if !matches!(port, "metrics" | "proxy-metrics") {
                    continue;
                }
                opened |= port == "metrics";
                ensure!(
                    !admits_every_pod(rule),
                    "NetworkPolicy {name} opens `{port}` to every pod"
                );
            }
        }
        ensure!(
            opened,
            "NetworkPolicy {name} does not let Prometheus reach `metrics`"
        );
    }
    Ok(())
}

/// An ingress rule without `from` (every source), or with a peer that selects every
/// namespace (an empty `namespaceSelector`) and no narrower `podSelector`.
pub(super) fn admits_every_pod(rule: &Yaml) -> bool {
    rule.get("from").is_none()
        || seq(rule.get("from")).any(|peer| {
            let empty = |key| {
                peer.get(key)
                    .and_then(Yaml::as_mapping)
                    .is_some_and(|m| m.is_empty())
            };
            empty("namespaceSelector")
                && (peer.get("podSelector").is_none() || empty("podSelector"))
        })
}

pub fn check_crd_structural(crd: &Yaml) -> Result<()> {
    fn walk(node: &Yaml, at: &str) -> Result<()> {
        let map = node
            .as_mapping()
            .with_context(|| format!("{at}: not a schema"))?;
        ensure!(
            !map.contains_key("$ref"),
            "{at}: $ref is not allowed in a CRD"
        );
        for junctor in ["oneOf", "anyOf", "allOf", "not"] {
            ensure!(
                !map.contains_key(junctor),
                "{at}: {junctor} is not used in this CRD (its branches may not set a type)"
            );
        }
        let ty = node.get("type").and_then(Yaml::as_str);
        let open = node
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Yaml::as_bool)
            == Some(true);
        if open && ty.is_none() {
            ensure!(
                !map.contains_key("properties")
                    && !map.contains_key("additionalProperties")
                    && !map.contains_key("items"),
                "{at}: a node without a type describes no fields"
            );
            return Ok(());
        }
        ensure!(
            ty.is_some(),
            "{at}: no type (structural schemas need one everywhere but on \
             x-kubernetes-preserve-unknown-fields nodes)"
        );
        if let Some(props) = node.get("properties").and_then(Yaml::as_mapping) {
            ensure!(
                !map.contains_key("additionalProperties"),
                "{at}: both properties and additionalProperties"
            );
            for (k, v) in props {
                walk(v, &format!("{at}.{}", k.as_str().unwrap_or("?")))?;
            }
        }
        if let Some(extra) = node.get("additionalProperties") {
            walk(extra, &format!("{at}.*"))?;
        }
        if ty == Some("array") {
            walk(
                node.get("items")
                    .with_context(|| format!("{at}: array without items"))?,
                &format!("{at}[]"),
            )?;
        }
        Ok(())
    }
    for version in seq(dig(crd, &["spec", "versions"])) {
        let name = str_at(version, &["name"]).unwrap_or("?");
        let schema = dig(version, &["schema", "openAPIV3Schema"])
            .with_context(|| format!("version {name}: no openAPIV3Schema"))?;
        walk(schema, name)?;
    }
    Ok(())
}

/// Field paths under `spec` the CRD defines (`routes[].weight_split[].percent`); label maps
/// (additionalProperties) are leaves.
pub fn crd_spec_fields(crd: &Yaml) -> Result<BTreeSet<String>> {
    fn walk(node: &Yaml, at: &str, out: &mut BTreeSet<String>) {
        if let Some(props) = node.get("properties").and_then(Yaml::as_mapping) {
            for (k, v) in props {
                let path = format!(
                    "{at}{}{}",
                    if at.is_empty() { "" } else { "." },
                    k.as_str().unwrap_or("?")
                );
                out.insert(path.clone());
                walk(v, &path, out);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{at}[]"), out);
        }
    }
    let version = seq(dig(crd, &["spec", "versions"]))
        .next()
        .context("no versions")?;
    let spec = dig(
        version,
        &["schema", "openAPIV3Schema", "properties", "spec"],
    )
    .context("no spec in the schema")?;
    let mut out = BTreeSet::new();
    walk(spec, "", &mut out);
    Ok(out)
}

/// Field paths a document sets, in the same notation.
fn set_fields(node: &Yaml, at: &str, out: &mut BTreeSet<String>) {
    match node {
        Yaml::Mapping(map) => {
            for (k, v) in map {
                let path = format!(
                    "{at}{}{}",
                    if at.is_empty() { "" } else { "." },
                    k.as_str().unwrap_or("?")
                );
                out.insert(path.clone());
                set_fields(v, &path, out);
            }
        }
        Yaml::Sequence(items) => items
            .iter()
            .for_each(|v| set_fields(v, &format!("{at}[]"), out)),
        _ => {}
    }
}

/// The example MeshPolicy sets every field the CRD defines, and its spec (with a VIP and two
/// backends, as the Service and its EndpointSlices would give) is a valid mesh service: so
/// every field name and value of the CRD is one the control plane's model accepts.
pub fn check_example_policy(crd: &Yaml, example: &Yaml) -> Result<()> {
    let spec = example.get("spec").context("no spec")?;
    let mut set = BTreeSet::new();
    set_fields(spec, "", &mut set);
    let unset: Vec<String> = crd_spec_fields(crd)?.difference(&set).cloned().collect();
    ensure!(
        unset.is_empty(),
        "does not set {} (every CRD field must be exercised, so its name is checked against \
         the model)",
        unset.join(", ")
    );
    let config = as_mesh_config(spec)?;
    sockmesh_model::parse_config(&config)
        .map_err(|e| anyhow::anyhow!("the spec is not a valid mesh service: {e}\n{config}"))?;
    Ok(())
}

/// A one-service mesh config from a MeshPolicy spec, as the Kubernetes source builds it.
fn as_mesh_config(spec: &Yaml) -> Result<String> {
    let spec = spec.as_mapping().context("spec is not a mapping")?;
    let mut service = Mapping::new();
    let name = spec.get("service").cloned().context("no spec.service")?;
    service.insert("name".into(), name);
    service.insert("vip".into(), "127.100.200.10".into());
    service.insert("port".into(), 80.into());
    let backends: Yaml = serde_yaml::from_str(
        "[{addr: '127.0.44.10:8080', labels: {track: stable}, zone: zone-a},\
          {addr: '127.0.45.10:8080', labels: {track: canary}, zone: zone-b}]",
    )?;
    service.insert("backends".into(), backends);
    for (k, v) in spec.iter().filter(|(k, _)| k.as_str() != Some("service")) {
        service.insert(k.clone(), v.clone());
    }
    // allowed_callers names are workloads: give each one, as the pod watch would. Selectors
    // need none (one that matches no workload is valid; which pods it admits is proven on a
    // cluster snapshot by sockmesh-control's `the_example_policy_admits_exactly_...` test).
    let mut workloads = Vec::new();
    for caller in seq(spec.get("allowed_callers")) {
        match caller {
            Yaml::String(name) => workloads.push(serde_yaml::from_str::<Yaml>(&format!(
                "{{name: {name}, cgroup: kubepods/{name}}}"
            ))?),
            Yaml::Mapping(_) => {}
            other => bail!("allowed_callers: {other:?} is neither a workload name nor a selector"),
        }
    }
    let mut config = Mapping::new();
    config.insert(
        "services".into(),
        Yaml::Sequence(vec![Yaml::Mapping(service)]),
    );
    config.insert("workloads".into(), Yaml::Sequence(workloads));
    Ok(serde_yaml::to_string(&config)?)
}

// ---- small YAML helpers ------------------------------------------------------------------------

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

pub fn dig<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

pub fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    dig(v, path).and_then(Yaml::as_str)
}

pub(super) fn seq(v: Option<&Yaml>) -> impl Iterator<Item = &Yaml> {
    v.and_then(Yaml::as_sequence).into_iter().flatten()
}

pub fn find<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> Result<&'a Yaml> {
    objects
        .iter()
        .find(|o| {
            str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name)
        })
        .with_context(|| format!("no {kind} {name} in the rendered manifests"))
}

pub(super) fn container<'a>(workload: &'a Yaml, name: &str) -> Result<&'a Yaml> {
    seq(dig(workload, &["spec", "template", "spec", "containers"]))
        .find(|c| str_at(c, &["name"]) == Some(name))
        .with_context(|| format!("no container {name}"))
}

pub(super) fn container_args(workload: &Yaml, name: &str) -> Result<Vec<String>> {
    Ok(seq(container(workload, name)?.get("args"))
        .filter_map(Yaml::as_str)
        .map(str::to_owned)
        .collect())
}

pub(super) fn container_port(workload: &Yaml, name: &str, port: &str) -> Result<u64> {
    seq(container(workload, name)?.get("ports"))
        .find(|p| str_at(p, &["name"]) == Some(port))
        .and_then(|p| p.get("containerPort").and_then(Yaml::as_u64))
        .with_context(|| format!("container {name}: no containerPort named {port}"))
}

fn service_port(service: &Yaml, port: &str) -> Result<u64> {
    let name = str_at(service, &["metadata", "name"]).unwrap_or("?");
    seq(dig(service, &["spec", "ports"]))
        .find(|p| str_at(p, &["name"]) == Some(port))
        .and_then(|p| p.get("port").and_then(Yaml::as_u64))
        .with_context(|| format!("Service {name} has no port named {port}"))
}

/// The value of `--name=value` in `args`.
pub(super) fn flag<'a>(args: &'a [String], name: &str) -> Result<&'a str> {
    let prefix = format!("{name}=");
    match args.iter().find_map(|a| a.strip_prefix(&prefix)) {
        Some(value) => Ok(value),
        None => bail!("no {name}=... argument"),
    }
}
