//! Address fields decoded from strings with errors that quote the offending text.
//!
//! serde's own `IpAddr`/`SocketAddr` impls report only "invalid IP address syntax", which
//! leaves an operator searching a long file for the bad literal; these name it. Binary
//! formats, where serde writes addresses as bytes rather than text, keep serde's decoding so
//! that what `Serialize` wrote still reads back.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Decodes a VIP: an IPv4 or IPv6 literal without a port.
pub(super) fn ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    if !deserializer.is_human_readable() {
        return IpAddr::deserialize(deserializer);
    }
    deserializer.deserialize_str(LiteralVisitor::<IpAddr> {
        kind: "IP address",
        expecting: "an IP address string like 127.100.0.1 or \"fd00::100\"",
        target: PhantomData,
    })
}

/// Decodes a backend address: `ip:port`, with IPv6 as `[ip]:port`.
pub(super) fn socket<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    if !deserializer.is_human_readable() {
        return SocketAddr::deserialize(deserializer);
    }
    deserializer.deserialize_str(LiteralVisitor::<SocketAddr> {
        kind: "socket address",
        expecting: "a socket address string like 127.0.0.2:8081 or \"[fd00::2]:8081\"",
        target: PhantomData,
    })
}

struct LiteralVisitor<T> {
    /// Names the literal in the error, e.g. `invalid socket address "127.0.0.300:80"`.
    kind: &'static str,
    /// Shown when the value is not a string at all (a number, a list, a map).
    expecting: &'static str,
    target: PhantomData<T>,
}

impl<T: FromStr> Visitor<'_> for LiteralVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|_| E::custom(format_args!("invalid {} {v:?}", self.kind)))
    }
}
