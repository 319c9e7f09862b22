//! The testbed's network, wired like a simple bridge CNI on every node and the nodes joined
//! by one more bridge, all in namespaces of the test's own, dual-stack. Addresses are from
//! 198.18.0.0/15 and fd00::/8 only (never 10/8, 172.16/12 or 192.168/16), and no namespace
//! has a route to the host's:
//!
//! ```text
//!  fabric netns: br0 198.18.0.100/24, fd00::100/64 (control plane, fake API server on its
//!                127.0.0.1)
//!     │ veth n<i> ─ eth0 198.18.0.<i>/24, fd00::<i>/64                  (node i, i = 1..)
//!  node i netns: cni0 198.18.<i>.1/24, fd00:<i>::1/64; forwarding on;
//!                198.18.<j>.0/24 via 198.18.0.<j>, fd00:<j>::/64 via fd00::<j>
//!     │ veth p<k> ─ eth0 198.18.<i>.<10+k>/24, fd00:<i>::<10+k>/64       (pod k of node i)
//!  pod netns:    198.18.0.0/15 via 198.18.<i>.1, fd00::/8 via fd00:<i>::1 (nothing else: a
//!                VIP that is not rewritten goes nowhere)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The fabric bridge's address: where the control plane listens.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The most nodes a testbed has (their pod networks are 198.18.<i>.0/24).
pub const MAX_NODES: usize = 16;
/// The most pods per node (198.18.<i>.10 - .249).
pub const MAX_PODS_PER_NODE: usize = 240;

/// A node's address on the fabric.
pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, node_octet(node))
}

/// Pod `k` (0-based, per node) of node `node` (0-based).
pub fn pod_ip(node: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, node_octet(node), 10 + k as u8)
}

/// A node's IPv6 address on the fabric.
pub fn node_ip6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(node_octet(node)))
}

/// Pod `k` of node `node`, IPv6.
pub fn pod_ip6(node: usize, k: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        u16::from(node_octet(node)),
        0,
        0,
        0,
        0,
        0,
        10 + k as u16,
    )
}

fn node_octet(node: usize) -> u8 {
    assert!(node < MAX_NODES, "at most {MAX_NODES} nodes");
    node as u8 + 1
}

/// The fabric: its bridge, with the control plane's address.
pub fn wire_fabric(fabric: &Netns) -> Result<()> {
    fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
    fabric.add_addr("br0", &format!("{CONTROL_IP}/24"))?;
    fabric.add_addr("br0", "fd00::100/64")?;
    fabric.ip(&["link", "set", "br0", "up"])?;
    Ok(())
}

/// Node `node` of `nodes`: its uplink to the fabric, its pod bridge and routes to the
/// other nodes' pod networks.
pub fn wire_node(fabric: &Netns, node_ns: &Netns, node: usize, nodes: usize) -> Result<()> {
    let uplink = format!("n{}", node + 1);
    fabric.ip(&[
        "link",
        "add",
        &uplink,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        node_ns.name(),
    ])?;
    fabric.ip(&["link", "set", &uplink, "master", "br0", "up"])?;
    node_ns.add_addr("eth0", &format!("{}/24", node_ip(node)))?;
    node_ns.add_addr("eth0", &format!("{}/64", node_ip6(node)))?;
    node_ns.ip(&["link", "set", "eth0", "up"])?;
    node_ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    node_ns.add_addr("cni0", &format!("198.18.{}.1/24", node_octet(node)))?;
    node_ns.add_addr("cni0", &format!("fd00:{:x}::1/64", node_octet(node)))?;
    node_ns.ip(&["link", "set", "cni0", "up"])?;
    sysctl(node_ns, "net.ipv4.ip_forward", "1")?;
    sysctl(node_ns, "net.ipv6.conf.all.forwarding", "1")?;
    for other in (0..nodes).filter(|o| *o != node) {
        node_ns.ip(&[
            "route",
            "add",
            &format!("198.18.{}.0/24", node_octet(other)),
            "via",
            &node_ip(other).to_string(),
        ])?;
        node_ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("fd00:{:x}::/64", node_octet(other)),
            "via",
            &node_ip6(other).to_string(),
        ])?;
    }
    Ok(())
}

/// Pod `k` of node `node`: a veth from the node's bridge into the pod's namespace.
pub fn wire_pod(node_ns: &Netns, pod_ns: &Netns, node: usize, k: usize) -> Result<()> {
    if k >= MAX_PODS_PER_NODE {
        bail!("at most {MAX_PODS_PER_NODE} pods per node");
    }
    let host_side = format!("p{k}");
    node_ns.ip(&[
        "link",
        "add",
        &host_side,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod_ns.name(),
    ])?;
    node_ns.ip(&["link", "set", &host_side, "master", "cni0", "up"])?;
    pod_ns.add_addr("eth0", &format!("{}/24", pod_ip(node, k)))?;
    pod_ns.add_addr("eth0", &format!("{}/64", pod_ip6(node, k)))?;
    pod_ns.ip(&["link", "set", "eth0", "up"])?;
    pod_ns.ip(&[
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        &format!("198.18.{}.1", node_octet(node)),
    ])?;
    pod_ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00::/8",
        "via",
        &format!("fd00:{:x}::1", node_octet(node)),
    ])?;
    Ok(())
}

/// `sysctl -w key=value` inside `ns`.
fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-q", "-w"])
        .arg(format!("{key}={value}"))
        .output()
        .context("running sysctl in the node's namespace")?;
    if !out.status.success() {
        bail!(
            "sysctl {key}={value} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_the_benchmark_range() {
        let range = |ip: Ipv4Addr| ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18;
        for node in 0..MAX_NODES {
            assert!(range(node_ip(node)));
            for k in [0, MAX_PODS_PER_NODE - 1] {
                assert!(range(pod_ip(node, k)));
                assert_ne!(pod_ip(node, k), node_ip(node));
            }
        }
        assert!(range(CONTROL_IP));
        assert_eq!(pod_ip(1, 0), Ipv4Addr::new(198, 18, 2, 10));
        for node in 0..MAX_NODES {
            assert_eq!(node_ip6(node).segments()[0], 0xfd00);
            for k in [0, MAX_PODS_PER_NODE - 1] {
                assert_eq!(pod_ip6(node, k).segments()[0], 0xfd00);
                assert_ne!(pod_ip6(node, k), node_ip6(node));
            }
        }
        assert_eq!(pod_ip6(1, 0).to_string(), "fd00:2::a");
    }
}
