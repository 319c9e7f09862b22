//! Checks on the agent's pod: what each container may add to its capabilities, and that the
//! L7 proxy container is wired to the agent the way the agent expects (link socket, pinned
//! origins map, the listener pods reach, the NetworkPolicy that lets them).

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use serde_yaml::Value as Yaml;
use sockmesh_common::{LAYOUT_VERSION, PROXY_ORIGINS_MAP};

use super::manifests::{
    admits_every_pod, container, container_args, container_port, dig, find, flag, seq, str_at,
};

/// What the agent container may add, and nothing else (the DaemonSet is not privileged):
/// three to run, `SYS_ADMIN` and `SYS_PTRACE` to drain inside pods' network namespaces.
pub const AGENT_CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"];
/// What the L7 proxy container may add: `bpf(2)` to open and read the pinned origins map.
pub const PROXY_CAPABILITIES: &[&str] = &["BPF"];

/// The container names of the agent's pod, as the checks know them.
const AGENT: &str = "agent";
const PROXY: &str = "proxy";
/// The downward-API variable the agent's `--proxy-listen` takes its address from.
const POD_IP: &str = "POD_IP";

/// Not privileged; every container drops ALL; the agent adds exactly its five capabilities,
/// the proxy exactly `BPF`, any other container nothing; init containers' additions (for
/// mounting bpffs) are theirs.
pub fn check_agent_security(daemonset: &Yaml) -> Result<()> {
    let spec = dig(daemonset, &["spec", "template", "spec"]).context("no pod spec")?;
    for (list, is_init) in [("containers", false), ("initContainers", true)] {
        for c in seq(spec.get(list)) {
            let name = str_at(c, &["name"]).unwrap_or("?");
            let ctx = dig(c, &["securityContext"]).context("no securityContext")?;
            ensure!(
                ctx.get("privileged") == Some(&Yaml::Bool(false)),
                "{name}: privileged must be false"
            );
            ensure!(
                ctx.get("allowPrivilegeEscalation") == Some(&Yaml::Bool(false)),
                "{name}: allowPrivilegeEscalation must be false"
            );
            let caps = |key| -> BTreeSet<&str> {
                seq(dig(ctx, &["capabilities", key]))
                    .filter_map(Yaml::as_str)
                    .collect()
            };
            ensure!(
                caps("drop") == BTreeSet::from(["ALL"]),
                "{name}: must drop ALL"
            );
            if is_init {
                continue;
            }
            let allowed: &[&str] = match name {
                AGENT => AGENT_CAPABILITIES,
                PROXY => PROXY_CAPABILITIES,
                _ => &[],
            };
            ensure!(
                caps("add") == allowed.iter().copied().collect(),
                "{name}: adds {:?}; the {name} container adds exactly {allowed:?} \
                 (deploy/README.md, \"Capabilities\")",
                caps("add")
            );
        }
    }
    Ok(())
}

/// The agent and its L7 proxy agree: `--proxy=external` exactly when a `proxy` container
/// runs; the proxy's `--agent-socket` is `<--state-dir>/proxy.sock` and its `--origins-map`
/// `<--bpffs>/v<LAYOUT_VERSION>/maps/SM_PROXY_ORIGINS`, each on a volume both containers
/// mount at the same path; unless the proxy is off, `--proxy-listen` is the pod IP
/// (`$(POD_IP)` from `status.podIP`, since pods cannot reach the agent pod's loopback) on
/// its `proxy` containerPort, which the agents' NetworkPolicy opens to every namespace.
pub fn check_proxy_wiring(objects: &[Yaml], daemonset: &Yaml) -> Result<()> {
    let args = container_args(daemonset, AGENT)?;
    let mode = flag(&args, "--proxy").unwrap_or("spawn");
    let has_proxy = container(daemonset, PROXY).is_ok();
    ensure!(
        !has_proxy || mode == "external",
        "agent runs --proxy={mode} beside a `{PROXY}` container: two proxies would take \
         the link (run the agent with --proxy=external)"
    );
    ensure!(
        has_proxy || mode != "external",
        "agent runs --proxy=external but the pod has no `{PROXY}` container: http services \
         would have no proxy"
    );
    if mode == "off" {
        return Ok(());
    }
    check_listen(objects, daemonset, &args)?;
    if !has_proxy {
        return Ok(());
    }

    let proxy_args = container_args(daemonset, PROXY)?;
    let socket = flag(&proxy_args, "--agent-socket")?;
    let state_dir = flag(&args, "--state-dir")?;
    let expected = format!("{}/proxy.sock", state_dir.trim_end_matches('/'));
    ensure!(
        socket == expected,
        "proxy --agent-socket={socket} is not the agent's {expected} (<--state-dir>/proxy.sock)"
    );
    shared_mount(daemonset, socket, state_dir)?;

    let map = flag(&proxy_args, "--origins-map")?;
    let bpffs = flag(&args, "--bpffs")?;
    let expected = format!(
        "{}/v{LAYOUT_VERSION}/maps/{PROXY_ORIGINS_MAP}",
        bpffs.trim_end_matches('/')
    );
    ensure!(
        map == expected,
        "proxy --origins-map={map} is not {expected} (<agent --bpffs>/v<LAYOUT_VERSION>/maps/\
         {PROXY_ORIGINS_MAP}; this build's layout is v{LAYOUT_VERSION})"
    );
    shared_mount(daemonset, map, bpffs)?;

    let metrics = flag(&proxy_args, "--metrics-addr")?;
    let port = container_port(daemonset, PROXY, "proxy-metrics")?;
    ensure!(
        metrics.ends_with(&format!(":{port}")),
        "proxy --metrics-addr={metrics} is not its `proxy-metrics` containerPort"
    );
    Ok(())
}

/// `--proxy-listen=$(POD_IP):PORT`, POD_IP from the downward API's `status.podIP`, PORT the
/// agent's `proxy` containerPort, open to every namespace in the NetworkPolicy.
fn check_listen(objects: &[Yaml], daemonset: &Yaml, args: &[String]) -> Result<()> {
    let listen = flag(args, "--proxy-listen").context(
        "agent: the default --proxy-listen is the agent pod's loopback, which no other pod \
         reaches; listen on $(POD_IP)",
    )?;
    let port = container_port(daemonset, AGENT, PROXY)?;
    let wanted = [
        format!("$({POD_IP}):{port}"),
        format!("[$({POD_IP})]:{port}"),
    ];
    ensure!(
        wanted.iter().any(|w| w == listen),
        "agent --proxy-listen={listen} is not $({POD_IP}):{port} (the pod IP, which pods \
         reach, on its `{PROXY}` containerPort)"
    );
    let from_pod_ip = seq(container(daemonset, AGENT)?.get("env")).any(|e| {
        str_at(e, &["name"]) == Some(POD_IP)
            && str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("status.podIP")
    });
    ensure!(
        from_pod_ip,
        "agent: env {POD_IP} (for --proxy-listen) must come from fieldRef status.podIP"
    );

    let policy = find(objects, "NetworkPolicy", "sockmesh-agent")?;
    let opened = seq(dig(policy, &["spec", "ingress"])).any(|rule| {
        let names_port = seq(rule.get("ports")).any(|p| match p.get("port") {
            Some(Yaml::String(name)) => name == PROXY,
            Some(number) => number.as_u64() == Some(port),
            None => false,
        });
        names_port && admits_every_pod(rule)
    });
    ensure!(
        opened,
        "NetworkPolicy sockmesh-agent does not admit the `{PROXY}` port ({port}) from every \
         namespace (`from: [namespaceSelector: {{}}]`): meshed pods' http connects land there"
    );
    Ok(())
}

/// `path` lies on one volume that the agent and the proxy mount at the same place, and the
/// agent's `dir` (its flag's directory) is on that same mount.
fn shared_mount(daemonset: &Yaml, path: &str, dir: &str) -> Result<()> {
    let agent = mount_of(daemonset, AGENT, path)?;
    let proxy = mount_of(daemonset, PROXY, path)?;
    ensure!(
        agent == proxy,
        "{path}: the agent mounts {agent:?} (volume, path) there, the proxy {proxy:?}; both \
         must see the same volume at the same path"
    );
    ensure!(
        mount_of(daemonset, AGENT, &format!("{dir}/x"))? == agent,
        "{path}: the agent's {dir} is on another mount than {agent:?}"
    );
    Ok(())
}

/// (volume, mountPath) of the deepest mount of `name` that holds `path`.
fn mount_of(daemonset: &Yaml, name: &str, path: &str) -> Result<(String, String)> {
    seq(container(daemonset, name)?.get("volumeMounts"))
        .filter_map(|m| Some((str_at(m, &["name"])?, str_at(m, &["mountPath"])?)))
        .filter(|(_, dir)| {
            path.strip_prefix(dir.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(_, dir)| dir.len())
        .map(|(v, dir)| (v.to_owned(), dir.to_owned()))
        .with_context(|| format!("container {name}: nothing is mounted at {path}"))
}
