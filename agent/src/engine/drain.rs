//! Draining: close long-lived routed connections to a backend that was banned or removed, so
//! their clients reconnect to healthy backends. Sockets are found with a sock_diag dump and
//! closed with SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY); only sockets whose cookie the connect
//! hook stamped for that (service, backend) are touched, never other traffic on the node.
//! A sock_diag socket sees one network namespace: [`netns`] finds the workloads' namespaces
//! and opens one there for each.

pub(crate) mod netns;

use std::{collections::BTreeSet, io, mem::size_of, net::SocketAddr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use sockmesh_common::{SockStamp, SOCK_STAMPS_MAP};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Every TCP state but LISTEN (10) and TIME_WAIT (6): the states of a live connection.
const LIVE_STATES: u32 = !((1 << 10) | (1 << 6));

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// Cookies of the sockets routed to `backend_id` of `service_id`, from the stamp map.
pub(crate) fn routed_cookies(
    map_dir: &Path,
    service_id: u32,
    backend_id: u32,
) -> Result<BTreeSet<u64>> {
    let data = MapData::from_pin(map_dir.join(SOCK_STAMPS_MAP)).context("opening socket stamps")?;
    let stamps: HashMap<MapData, u64, SockStamp> = HashMap::try_from(Map::LruHashMap(data))?;
    Ok(stamps
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, s)| s.service_id == service_id && s.backend_id == backend_id)
        .map(|(cookie, _)| cookie)
        .collect())
}

/// Closes every live TCP socket connected to `dst` whose cookie is in `cookies`, among the
/// sockets of `nl`'s network namespace; returns how many were closed.
pub(crate) fn destroy(nl: &Netlink, dst: SocketAddr, cookies: &BTreeSet<u64>) -> io::Result<usize> {
    if cookies.is_empty() {
        return Ok(0);
    }
    let mut closed = 0;
    // A v4 backend can also be reached by a dual-stack socket (AF_INET6, v4-mapped).
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        if dst.is_ipv6() && family == libc::AF_INET as u8 {
            continue;
        }
        let ids = nl.dump(family)?;
        for id in doomed(family, &ids, dst, cookies) {
            match nl.destroy(family, *id) {
                Ok(()) => closed += 1,
                // Closed meanwhile: nothing left to do.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(closed)
}

/// The decision: of a dump's sockets, those a drain closes are the ones connected to `dst`
/// whose cookie the connect hook stamped for the drained (service, backend). Cookies are
/// unique across network namespaces, so the same set serves every namespace.
fn doomed<'a>(
    family: u8,
    ids: &'a [SockId],
    dst: SocketAddr,
    cookies: &'a BTreeSet<u64>,
) -> impl Iterator<Item = &'a SockId> + 'a {
    ids.iter().filter(move |id| {
        let cookie = u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32);
        cookies.contains(&cookie) && peer(family, id) == Some(dst)
    })
}

fn peer(family: u8, id: &SockId) -> Option<SocketAddr> {
    let port = u16::from_be(id.dport);
    let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
    if family == libc::AF_INET as u8 {
        let b = bytes(&id.dst[..1]);
        return Some(SocketAddr::new(
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
            port,
        ));
    }
    let b: [u8; 16] = bytes(&id.dst).try_into().ok()?;
    let v6 = std::net::Ipv6Addr::from(b);
    Some(SocketAddr::new(
        v6.to_ipv4_mapped().map_or(v6.into(), Into::into),
        port,
    ))
}

/// A NETLINK_SOCK_DIAG socket. It answers for the network namespace it was created in, for
/// its whole life, whatever thread uses it later ([`netns`] creates some in other namespaces).
pub(crate) struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, kind: u16, flags: u16, req: &DiagReq) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let hdr = NlMsgHdr {
            len: (size_of::<NlMsgHdr>() + size_of::<DiagReq>()) as u32,
            kind,
            flags,
            seq: 1,
            pid: 0,
        };
        let mut buf = Vec::with_capacity(hdr.len as usize);
        buf.extend_from_slice(as_bytes(&hdr));
        buf.extend_from_slice(as_bytes(req));
        // SAFETY: buffer valid for its length; netlink to the kernel (pid 0) needs no address.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives messages until DONE (dump) or one ERROR (ack); calls `f` for each payload.
    fn recv(&self, mut f: impl FnMut(&NlMsgHdr, &[u8])) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buffer valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            while off + size_of::<NlMsgHdr>() <= n as usize {
                // SAFETY: bounds checked above; read_unaligned for the packed stream.
                let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                let len = hdr.len as usize;
                if len < size_of::<NlMsgHdr>() || off + len > n as usize {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &buf[off + size_of::<NlMsgHdr>()..off + len];
                match hdr.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            payload
                                .get(..4)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or([0; 4]),
                        );
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => f(&hdr, payload),
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn dump(&self, family: u8) -> io::Result<Vec<SockId>> {
        let req = DiagReq {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: LIVE_STATES,
            ..Default::default()
        };
        self.send(
            SOCK_DIAG_BY_FAMILY,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &req,
        )?;
        let mut ids = Vec::new();
        self.recv(|_, payload| {
            if payload.len() >= size_of::<DiagMsg>() {
                // SAFETY: length checked; any bit pattern is a valid DiagMsg.
                let msg: DiagMsg = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
                ids.push(msg.id);
            }
        })?;
        Ok(ids)
    }

    fn destroy(&self, family: u8, id: SockId) -> io::Result<()> {
        let req = DiagReq {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            states: u32::MAX,
            id,
            ..Default::default()
        };
        self.send(
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            &req,
        )?;
        self.recv(|_, _| {})
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) plain-integer struct without padding holes that matter here;
    // we only read its bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<SockId>(), 48);
        assert_eq!(size_of::<DiagReq>(), 56);
        assert_eq!(size_of::<DiagMsg>(), 72);
    }

    fn sock(dst: [u8; 4], port: u16, cookie: u64) -> SockId {
        let mut id = SockId {
            dport: port.to_be(),
            cookie: [cookie as u32, (cookie >> 32) as u32],
            ..Default::default()
        };
        id.dst[0] = u32::from_ne_bytes(dst);
        id
    }

    #[test]
    fn only_stamped_sockets_to_the_drained_backend_are_doomed() {
        let dst: SocketAddr = "198.18.0.10:18251".parse().unwrap();
        let ids = [
            sock([198, 18, 0, 10], 18251, 7), // stamped, to the backend: closed
            sock([198, 18, 0, 10], 18251, 8), // same peer, not routed by the mesh
            sock([198, 18, 0, 11], 18251, 9), // stamped, another backend's peer
            sock([198, 18, 0, 10], 18252, 7 | 1 << 40), // cookie's high word differs
            sock([198, 18, 0, 10], 18251, 1 << 33), // high-word cookie, stamped
        ];
        let cookies = BTreeSet::from([7, 9, 1 << 33]);
        let picked: Vec<u64> = doomed(libc::AF_INET as u8, &ids, dst, &cookies)
            .map(|id| u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32))
            .collect();
        assert_eq!(picked, vec![7, 1 << 33]);
        assert_eq!(
            doomed(libc::AF_INET as u8, &ids, dst, &BTreeSet::new()).count(),
            0
        );
    }

    #[test]
    fn peer_addresses_decode_both_families_and_mapped() {
        let mut id = SockId {
            dport: 8081u16.to_be(),
            ..Default::default()
        };
        id.dst[0] = u32::from_ne_bytes([127, 0, 0, 2]);
        assert_eq!(
            peer(libc::AF_INET as u8, &id),
            Some("127.0.0.2:8081".parse().unwrap())
        );
        id.dst = [
            0,
            0,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
            u32::from_ne_bytes([127, 0, 0, 2]),
        ];
        assert_eq!(
            peer(libc::AF_INET6 as u8, &id),
            Some("127.0.0.2:8081".parse().unwrap())
        );
    }
}
