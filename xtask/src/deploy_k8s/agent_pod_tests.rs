//! The agent pod's checks on the shipped DaemonSet and NetworkPolicy, and one edit per rule
//! that each must refuse.

use serde_yaml::Value as Yaml;

use super::agent_pod::*;
use super::manifests::read;
use crate::workspace;

fn text(path: &str) -> String {
    read(&workspace::root().join(path)).unwrap()
}

fn daemonset() -> String {
    text("deploy/k8s/agent-daemonset.yaml")
}

fn policies() -> String {
    text("deploy/k8s/networkpolicy.yaml")
}

fn parse(text: &str) -> Vec<Yaml> {
    text.split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

/// The wiring check's verdict on a DaemonSet and the NetworkPolicies, as text.
fn wiring(daemonset: &Yaml, policies: &str) -> Result<(), String> {
    check_proxy_wiring(&parse(policies), daemonset).map_err(|e| format!("{e:#}"))
}

/// `text` with `from` replaced (once, and it must be there).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the shipped text lacks {from:?}");
    text.replacen(from, to, 1)
}

fn containers(ds: &mut Yaml) -> &mut Vec<Yaml> {
    ds["spec"]["template"]["spec"]["containers"]
        .as_sequence_mut()
        .unwrap()
}

fn proxy_container(ds: &mut Yaml) -> &mut Yaml {
    containers(ds)
        .iter_mut()
        .find(|c| c["name"].as_str() == Some("proxy"))
        .unwrap()
}

fn expect_err(got: Result<(), String>, fragment: &str) {
    let err = got.expect_err(fragment);
    assert!(err.contains(fragment), "expected {fragment:?} in: {err}");
}

#[test]
fn shipped_pod_wires_its_proxy() {
    let ds: Yaml = serde_yaml::from_str(&daemonset()).unwrap();
    check_agent_security(&ds).unwrap();
    wiring(&ds, &policies()).unwrap();
}

#[test]
fn proxy_keeps_to_bpf_and_the_agent_to_its_five() {
    let check = |text: &str| {
        check_agent_security(&serde_yaml::from_str(text).unwrap()).map_err(|e| format!("{e:#}"))
    };
    let shipped = daemonset();
    // The proxy's capability list is the one with a single `- BPF` after `add:`.
    let proxy_add = "              add:\n                # bpf(2) BPF_OBJ_GET";
    let more = edit(
        &shipped,
        proxy_add,
        "              add:\n                - NET_ADMIN\n                # bpf(2) BPF_OBJ_GET",
    );
    expect_err(check(&more), "proxy: adds {\"BPF\", \"NET_ADMIN\"}");
    let mut none: Yaml = serde_yaml::from_str(&shipped).unwrap();
    proxy_container(&mut none)["securityContext"]["capabilities"]
        .as_mapping_mut()
        .unwrap()
        .remove("add");
    expect_err(
        check_agent_security(&none).map_err(|e| format!("{e:#}")),
        "the proxy container adds exactly [\"BPF\"]",
    );
    // The agent's five do not carry over to another container name.
    let mut renamed: Yaml = serde_yaml::from_str(&shipped).unwrap();
    proxy_container(&mut renamed)["name"] = "sidecar".into();
    expect_err(
        check_agent_security(&renamed).map_err(|e| format!("{e:#}")),
        "the sidecar container adds exactly []",
    );
    let mut no_drop: Yaml = serde_yaml::from_str(&shipped).unwrap();
    proxy_container(&mut no_drop)["securityContext"]["capabilities"]
        .as_mapping_mut()
        .unwrap()
        .remove("drop");
    expect_err(
        check_agent_security(&no_drop).map_err(|e| format!("{e:#}")),
        "proxy: must drop ALL",
    );
}

#[test]
fn proxy_mode_matches_the_proxy_container() {
    let shipped = daemonset();
    let spawn = edit(&shipped, "- --proxy=external", "- --proxy=spawn");
    expect_err(
        wiring(&serde_yaml::from_str(&spawn).unwrap(), &policies()),
        "agent runs --proxy=spawn beside a `proxy` container",
    );
    let default = edit(&shipped, "            - --proxy=external\n", "");
    expect_err(
        wiring(&serde_yaml::from_str(&default).unwrap(), &policies()),
        "agent runs --proxy=spawn beside",
    );
    let mut alone: Yaml = serde_yaml::from_str(&shipped).unwrap();
    containers(&mut alone).retain(|c| c["name"].as_str() != Some("proxy"));
    expect_err(
        wiring(&alone, &policies()),
        "--proxy=external but the pod has no `proxy` container",
    );
    // Off with no proxy container: nothing else to agree on.
    let mut off: Yaml = serde_yaml::from_str(&edit(&shipped, "=external", "=off")).unwrap();
    containers(&mut off).retain(|c| c["name"].as_str() != Some("proxy"));
    wiring(&off, &policies()).unwrap();
}

#[test]
fn proxy_reaches_the_agents_socket_on_a_shared_volume() {
    let shipped = daemonset();
    let elsewhere = edit(
        &shipped,
        "--agent-socket=/run/sockmesh/proxy.sock",
        "--agent-socket=/run/sockmesh/link.sock",
    );
    expect_err(
        wiring(&serde_yaml::from_str(&elsewhere).unwrap(), &policies()),
        "proxy --agent-socket=/run/sockmesh/link.sock is not the agent's /run/sockmesh/proxy.sock",
    );
    let mut own_volume: Yaml = serde_yaml::from_str(&shipped).unwrap();
    for m in proxy_container(&mut own_volume)["volumeMounts"]
        .as_sequence_mut()
        .unwrap()
    {
        if m["name"].as_str() == Some("state") {
            m["name"] = "proxy-scratch".into();
        }
    }
    expect_err(
        wiring(&own_volume, &policies()),
        "both must see the same volume at the same path",
    );
    let mut unmounted: Yaml = serde_yaml::from_str(&shipped).unwrap();
    proxy_container(&mut unmounted)["volumeMounts"]
        .as_sequence_mut()
        .unwrap()
        .retain(|m| m["name"].as_str() != Some("state"));
    expect_err(
        wiring(&unmounted, &policies()),
        "container proxy: nothing is mounted at /run/sockmesh/proxy.sock",
    );
}

#[test]
fn origins_map_is_the_agents_pin_of_this_layout() {
    let shipped = daemonset();
    let pin = format!(
        "/sys/fs/bpf/sockmesh/v{}/maps/SM_PROXY_ORIGINS",
        sockmesh_common::LAYOUT_VERSION
    );
    let check = |from: &str, to: &str| {
        wiring(
            &serde_yaml::from_str(&edit(&shipped, from, to)).unwrap(),
            &policies(),
        )
    };
    let older = format!("/v{}/", sockmesh_common::LAYOUT_VERSION - 1);
    let this = format!("/v{}/", sockmesh_common::LAYOUT_VERSION);
    expect_err(
        check(&this, &older),
        &format!("is not {pin} (<agent --bpffs>/v<LAYOUT_VERSION>"),
    );
    expect_err(
        check("maps/SM_PROXY_ORIGINS\n", "maps/SM_PROXY\n"),
        "is not /sys/fs/bpf/sockmesh/v",
    );
    expect_err(
        check(
            "--origins-map=/sys/fs/bpf/sockmesh/",
            "--origins-map=/sys/fs/bpf/other/",
        ),
        "is not /sys/fs/bpf/sockmesh/v",
    );
    let mut no_bpffs: Yaml = serde_yaml::from_str(&shipped).unwrap();
    proxy_container(&mut no_bpffs)["volumeMounts"]
        .as_sequence_mut()
        .unwrap()
        .retain(|m| m["name"].as_str() != Some("bpffs"));
    expect_err(
        wiring(&no_bpffs, &policies()),
        &format!("container proxy: nothing is mounted at {pin}"),
    );
    expect_err(
        check("--metrics-addr=0.0.0.0:9478", "--metrics-addr=0.0.0.0:9480"),
        "not its `proxy-metrics` containerPort",
    );
}

#[test]
fn proxy_listens_on_the_pod_ip_open_to_every_namespace() {
    let shipped = daemonset();
    let check = |ds: &str, policies: &str| wiring(&serde_yaml::from_str(ds).unwrap(), policies);
    let loopback = edit(
        &shipped,
        "--proxy-listen=$(POD_IP):15001",
        "--proxy-listen=127.0.0.1:15001",
    );
    expect_err(
        check(&loopback, &policies()),
        "agent --proxy-listen=127.0.0.1:15001 is not $(POD_IP):15001",
    );
    let default = edit(
        &shipped,
        "            - --proxy-listen=$(POD_IP):15001\n",
        "",
    );
    expect_err(check(&default, &policies()), "the default --proxy-listen");
    let other_port = edit(&shipped, "containerPort: 15001", "containerPort: 15002");
    expect_err(check(&other_port, &policies()), "is not $(POD_IP):15002");
    let node_ip = edit(
        &shipped,
        "fieldPath: status.podIP",
        "fieldPath: status.hostIP",
    );
    expect_err(
        check(&node_ip, &policies()),
        "env POD_IP (for --proxy-listen) must come from fieldRef status.podIP",
    );

    let closed = "does not admit the `proxy` port (15001) from every namespace";
    let one_namespace = edit(
        &policies(),
        "        - namespaceSelector: {}\n",
        "        - namespaceSelector:\n            matchLabels:\n              team: shop\n",
    );
    expect_err(check(&shipped, &one_namespace), closed);
    let some_pods = edit(
        &policies(),
        "        - namespaceSelector: {}\n",
        "        - namespaceSelector: {}\n          podSelector:\n            matchLabels:\n              app: web\n",
    );
    expect_err(check(&shipped, &some_pods), closed);
    let no_rule = edit(
        &policies(),
        "        - port: proxy\n",
        "        - port: 15999\n",
    );
    expect_err(check(&shipped, &no_rule), closed);
    // By number is the same port.
    let by_number = edit(
        &policies(),
        "        - port: proxy\n",
        "        - port: 15001\n",
    );
    check(&shipped, &by_number).unwrap();
}
