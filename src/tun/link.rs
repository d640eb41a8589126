//! rtnetlink requests for link setup: MTU, link state, addresses, the overlay route, and
//! underlay MTU discovery.
//!
//! Built on `netlink-packet-route` and `netlink-sys` (synchronous, no runtime). Each request is
//! sent with `NLM_F_ACK` and the kernel's answer is read until the ACK or the error arrives, so
//! a failure carries the kernel's errno.

use std::io;
use std::net::IpAddr;

use crate::sys::Release;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// A link as the kernel lists it: index and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
}

/// An address as the kernel lists it, with the flags that rank it for interface selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    /// Index of the link holding it.
    pub index: u32,
    /// The local address (`IFA_LOCAL` where present, else `IFA_ADDRESS`).
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// `IFA_F_PERMANENT`: configured, not autoconfigured.
    pub permanent: bool,
    /// `IFA_F_DEPRECATED`.
    pub deprecated: bool,
    /// `IFA_F_SECONDARY` (the same bit as IPv6's `IFA_F_TEMPORARY`).
    pub secondary: bool,
}

/// A connected rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a route netlink socket in the current network namespace.
    ///
    /// # Errors
    ///
    /// The socket, bind or connect error.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        packet.header.flags = NLM_F_REQUEST | flags;
        packet.header.sequence_number = self.seq;
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&data[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                        NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Sets the MTU of link `index` and brings it up.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn set_mtu_up(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Sets the most segments the kernel puts into one super-packet for link `index`
    /// (`gso_max_segs`): a larger one is segmented in software before the device.
    ///
    /// # Errors
    ///
    /// The kernel's error (one that cannot change it on an existing device).
    pub fn set_gso_max_segs(&mut self, index: u32, segs: u32) -> io::Result<()> {
        self.set_link(index, LinkAttribute::GsoMaxSegs(segs))
    }

    /// Sets the transmit queue length of link `index`, in packets.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn set_txqueuelen(&mut self, index: u32, packets: u32) -> io::Result<()> {
        self.set_link(index, LinkAttribute::TxQueueLen(packets))
    }

    /// Sets one attribute of link `index` (`RTM_SETLINK`).
    fn set_link(&mut self, index: u32, attribute: LinkAttribute) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(attribute);
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Adds (or replaces) `addr/prefix_len` on link `index`.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut msg = address_message(index, addr, prefix_len);
        msg.attributes.push(AddressAttribute::Address(addr));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes address `addr`/`prefix_len` from link `index`.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn delete_address(&mut self, index: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let msg = address_message(index, addr, prefix_len);
        self.request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)
            .map(drop)
    }

    /// Adds the route `net dev <index>` (scope link, main table). A route that is already there
    /// through this device is left alone (`EEXIST` is not an error), as flanneld treats it when
    /// it restarts on a device that kept its route; one through another device is an error
    /// (`AlreadyExists`, naming the device): the network would not reach this node's device,
    /// and the other device most likely belongs to another node on this host.
    ///
    /// # Errors
    ///
    /// The kernel's error other than `EEXIST`.
    pub fn add_route(&mut self, index: u32, net: ipnet::IpNet) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match net {
            ipnet::IpNet::V4(_) => AddressFamily::Inet,
            ipnet::IpNet::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = net.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Link;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                net.network(),
            )));
        msg.attributes.push(RouteAttribute::Oif(index));
        // A route through a device that no longer exists belongs to a node that has just
        // exited: the kernel flushes it with the device, some milliseconds after the process
        // is reaped. Waited for, as the node's sockets and queues are.
        crate::sys::until_released(
            &format!("the route to {net}"),
            std::time::Duration::from_millis(10),
            || {
                match self.request(
                    RouteNetlinkMessage::NewRoute(msg.clone()),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                ) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    other => return Release::Done(other.map(drop)),
                }
                let oifs = match self.route_oifs(net) {
                    Ok(oifs) if oifs.contains(&Some(index)) => return Release::Done(Ok(())),
                    Ok(oifs) => oifs,
                    Err(e) => return Release::Done(Err(e)),
                };
                let error = io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    self.route_conflict(net, oifs.first().copied().flatten()),
                );
                let dying = !oifs.is_empty()
                    && oifs.iter().all(|o| o.is_some_and(|i| !self.link_exists(i)));
                if dying {
                    Release::Held(error)
                } else {
                    Release::Done(Err(error))
                }
            },
        )
    }

    /// Returns whether link `index` exists (a netlink error counts as existing: the caller
    /// then reports the conflict rather than wait).
    pub fn link_exists(&mut self, index: u32) -> bool {
        !matches!(self.link_up(index), Ok(None))
    }

    /// Returns the output interface of each main-table route for exactly `net` (`None` for a
    /// route without one: a blackhole, unreachable or multipath route).
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn route_oifs(&mut self, net: ipnet::IpNet) -> io::Result<Vec<Option<u32>>> {
        let mut msg = RouteMessage::default();
        let family = match net {
            ipnet::IpNet::V4(_) => AddressFamily::Inet,
            ipnet::IpNet::V6(_) => AddressFamily::Inet6,
        };
        msg.header.address_family = family;
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        let dst = RouteAddress::from(net.network());
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.address_family == family
                        && r.header.destination_prefix_length == net.prefix_len()
                        && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
                        && r.attributes
                            .iter()
                            .any(|a| matches!(a, RouteAttribute::Destination(d) if *d == dst)) =>
                {
                    Some(r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    }))
                }
                _ => None,
            })
            .collect())
    }

    /// Says that `net` is already routed elsewhere: to the interface `oif` (by name), or
    /// without a device.
    pub fn route_conflict(&mut self, net: ipnet::IpNet, oif: Option<u32>) -> String {
        let to = match oif {
            None => "without a device (a blackhole, unreachable or multipath route)".to_owned(),
            Some(oif) => {
                let name = self
                    .links()
                    .ok()
                    .and_then(|l| l.into_iter().find(|l| l.index == oif))
                    .map_or_else(|| format!("interface {oif}"), |l| l.name);
                format!("to {name}")
            }
        };
        format!(
            "{net} is already routed {to}: is another node running on this host? Stop it, or \
             delete that route"
        )
    }

    /// Returns whether link `index` is up (`IFF_UP`); `None` when there is no such link.
    ///
    /// # Errors
    ///
    /// The kernel's error other than "no such device".
    pub fn link_up(&mut self, index: u32) -> io::Result<Option<bool>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => replies,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.header.index == index => {
                Some(l.header.flags.contains(LinkFlags::Up))
            }
            _ => None,
        }))
    }

    /// Returns the owner and group of TUN link `index` (`IFLA_TUN_OWNER`, `IFLA_TUN_GROUP`,
    /// Linux 4.15), each `None` when unset: a process of that user or group may attach to the
    /// device without `CAP_NET_ADMIN`.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn tun_owner(&mut self, index: u32) -> io::Result<(Option<u32>, Option<u32>)> {
        use netlink_packet_core::Nla as _;
        use netlink_packet_route::link::{InfoData, InfoTun, LinkInfo};
        /// `IFLA_TUN_OWNER` and `IFLA_TUN_GROUP` (include/uapi/linux/if_link.h).
        const OWNER: u16 = 1;
        const GROUP: u16 = 2;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)?;
        let mut found = (None, None);
        let infos = replies.iter().flat_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.header.index == index => l.attributes.as_slice(),
            _ => &[],
        });
        for attr in infos {
            let LinkAttribute::LinkInfo(info) = attr else {
                continue;
            };
            for item in info {
                let LinkInfo::Data(InfoData::Tun(nlas)) = item else {
                    continue;
                };
                for nla in nlas {
                    let InfoTun::Other(nla) = nla else {
                        continue;
                    };
                    if nla.value_len() != 4 {
                        continue;
                    }
                    let mut raw = [0u8; 4];
                    nla.emit_value(&mut raw);
                    // -1 (INVALID_UID/GID) is "unset".
                    let id = Some(u32::from_ne_bytes(raw)).filter(|&id| id != u32::MAX);
                    match nla.kind() {
                        OWNER => found.0 = id,
                        GROUP => found.1 = id,
                        _ => {}
                    }
                }
            }
        }
        Ok(found)
    }

    /// Returns the MTU of link `index`.
    ///
    /// # Errors
    ///
    /// The kernel's error, or `NotFound` when the answer carries no MTU.
    pub fn mtu(&mut self, index: u32) -> io::Result<u32> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)?;
        replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(mtu) => Some(*mtu),
                    _ => None,
                }),
                _ => None,
            })
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no MTU in the link answer"))
    }

    /// Returns every link, in index order.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn links(&mut self) -> io::Result<Vec<LinkInfo>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut links: Vec<LinkInfo> = replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(LinkInfo {
                        index: l.header.index,
                        name: name.clone(),
                    }),
                    _ => None,
                }),
                _ => None,
            })
            .collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Returns every address of every link.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn addresses(&mut self) -> io::Result<Vec<AddrInfo>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let local = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    // IFA_FLAGS carries all 32 bits; the header has the low 8 (older kernels).
                    let flags = a
                        .attributes
                        .iter()
                        .find_map(|x| match x {
                            AddressAttribute::Flags(f) => Some(*f),
                            _ => None,
                        })
                        .unwrap_or_else(|| {
                            AddressFlags::from_bits_retain(a.header.flags.bits().into())
                        });
                    local.or(address).map(|ip| AddrInfo {
                        index: a.header.index,
                        ip,
                        prefix_len: a.header.prefix_len,
                        permanent: flags.contains(AddressFlags::Permanent),
                        deprecated: flags.contains(AddressFlags::Deprecated),
                        secondary: flags.contains(AddressFlags::Secondary),
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Returns the output interface of the first IPv4 default route of the main table, if
    /// there is one (for a multipath route, its first next hop's).
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn default_route_v4(&mut self) -> io::Result<Option<u32>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.address_family == AddressFamily::Inet
                    && r.header.destination_prefix_length == 0
                    && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN) =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Asks the kernel which route a packet to `dst` takes (`ip route get`): returns the
    /// output interface and the preferred source address, if the answer has them.
    ///
    /// # Errors
    ///
    /// The kernel's error (for example `ENETUNREACH` when no route leads there).
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<(u32, Option<IpAddr>)>> {
        let mut msg = RouteMessage::default();
        let (family, len) = match dst {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let replies = self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_ACK)?;
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })?;
                let src = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                    RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                    _ => None,
                });
                Some((oif, src))
            }
            _ => None,
        }))
    }

    /// Returns the index of the link that holds address `ip`, if any.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn index_holding(&mut self, ip: IpAddr) -> io::Result<Option<u32>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => a
                .attributes
                .iter()
                .any(|attr| {
                    matches!(attr, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip)
                })
                .then_some(a.header.index),
            _ => None,
        }))
    }
}

/// Returns a route's table: the `RTA_TABLE` attribute (which holds ids above 255) where present,
/// else the header's byte.
fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(r.header.table))
}

/// An address message for `addr`/`prefix_len` on link `index`, with its local address.
fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg
}
