//! Header parsing with bounds checks on every read. Anything that is not well-formed IPv4 in
//! Ethernet returns None and is passed to the stack untouched (which validates and drops it).
use lb_common::{Tuple4, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::packet::{read, Packet};

pub const ETH_LEN: usize = 14;
/// Offset of the EtherType.
pub const ETH_PROTO: usize = 12;
pub const IP_OFF: usize = ETH_LEN;
/// Offsets of the IPv4 identification and protocol fields.
pub const IP_ID: usize = IP_OFF + 4;
pub const IP_PROTO: usize = IP_OFF + 9;
pub const IP_TTL: usize = IP_OFF + 8;
pub const IP_CSUM: usize = IP_OFF + 10;
pub const IP_SADDR: usize = IP_OFF + 12;
pub const IP_DADDR: usize = IP_OFF + 16;
/// IPv4's EtherType, host order.
pub const ETH_P_IP: u16 = 0x0800;
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;
pub use lb_common::flow_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
const IPV4_MIN: usize = 20;
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;
/// What an ICMP error needs after its own header: the quoted IPv4 header (with options) and its
/// ports.
const ICMP_QUOTE_MAX: usize = 8 + 60 + 8;

#[derive(Clone, Copy)]
pub struct Flow {
    /// Offset of the L4 header (IPv4 options are honoured).
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    /// Network byte order; 0 for ICMP and for non-first fragments.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers (network order) and header length in bytes,
    /// kept for building a reset.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_hlen: usize,
    /// IPv4 total length (host order).
    pub ip_len: usize,
    /// Part of a fragmented datagram (MF set or a non-zero offset).
    pub fragment: bool,
    /// A non-first fragment: no L4 header.
    pub later_fragment: bool,
}

impl Flow {
    #[inline(always)]
    pub fn tuple(&self) -> Tuple4 {
        Tuple4 {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Offset of the L4 checksum, for TCP and UDP.
    #[inline(always)]
    pub fn l4_csum(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }
}

/// The fixed IPv4 header, as read in one piece.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub csum: u16,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4 {
    /// Header length in bytes, if this is a sane IPv4 header.
    #[inline(always)]
    pub fn header_len(&self) -> Option<usize> {
        let len = usize::from(self.vihl & 0x0f) * 4;
        if self.vihl >> 4 != 4 || len < 20 {
            return None;
        }
        Some(len)
    }
}

#[inline(always)]
pub fn parse<P: Packet>(p: &mut P) -> Option<Flow> {
    // TC sees what is linear in the skb; each header is made linear only as far as it is read,
    // and only where it is not already: a pull on a cloned skb (every TCP segment a pod sends)
    // copies its head, service or not.
    p.ensure(IP_OFF + IPV4_MIN);
    if read::<u16, P>(p, ETH_PROTO)? != ETH_P_IP.to_be() {
        return None;
    }
    let ip: Ipv4 = read(p, IP_OFF)?;
    let ihl = ip.header_len()?;
    let frag = u16::from_be(ip.frag_off);
    let mut flow = Flow {
        l4: IP_OFF + ihl,
        proto: ip.proto,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_hlen: 0,
        ip_len: usize::from(u16::from_be(ip.tot_len)),
        fragment: frag & (IP_MF | IP_OFFSET) != 0,
        later_fragment: frag & IP_OFFSET != 0,
    };
    if flow.later_fragment {
        return Some(flow);
    }
    // Each variable-offset header is read once, as a whole, into a copy: the verifier tracks
    // bounds per pointer, so a second pointer computed from the same offset would be unchecked.
    let ports: [u16; 2] = match flow.proto {
        PROTO_TCP => {
            p.ensure(flow.l4 + TCP_MIN);
            // The whole fixed header must be there: NAT rewrites its checksum.
            let tcp: [u8; 20] = read(p, flow.l4)?;
            flow.tcp_flags = tcp[13];
            flow.tcp_seq = u32::from_ne_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            flow.tcp_ack = u32::from_ne_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            flow.tcp_hlen = usize::from(tcp[12] >> 4) * 4;
            [
                u16::from_ne_bytes([tcp[0], tcp[1]]),
                u16::from_ne_bytes([tcp[2], tcp[3]]),
            ]
        }
        PROTO_UDP => {
            p.ensure(flow.l4 + UDP_LEN);
            let udp: [u16; 4] = read(p, flow.l4)?;
            [udp[0], udp[1]]
        }
        PROTO_ICMP => {
            p.ensure(flow.l4 + ICMP_QUOTE_MAX);
            read::<[u8; 8], P>(p, flow.l4)?;
            return Some(flow);
        }
        _ => return Some(flow),
    };
    flow.sport = ports[0];
    flow.dport = ports[1];
    Some(flow)
}
