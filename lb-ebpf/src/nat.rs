//! Address and port rewrites with incremental checksum updates.
use lb_common::PROTO_UDP;

use crate::{
    packet::{read, Packet, Res, CSUM_MANGLED_0, CSUM_PSEUDO},
    parse::{Flow, IP_CSUM, IP_DADDR, IP_SADDR, IP_TTL},
};

/// What a router does to a packet it forwards, for those lb transmits itself (XDP_TX,
/// XDP_REDIRECT, TC redirect to the next hop), which bypass the stack's forwarding: one hop less
/// to live, the header checksum updated. False when no hop is left (TTL 0 or 1): the caller hands
/// the packet to the stack, whose forwarding drops it (and answers ICMP time exceeded where it
/// can); a routing loop through lb then ends as any other does.
#[inline(always)]
pub fn decrement_ttl<P: Packet>(p: &mut P) -> bool {
    // TTL and protocol, one 16-bit word of the header checksum.
    let Some(word) = read::<[u8; 2], P>(p, IP_TTL) else {
        return false;
    };
    if word[0] <= 1 {
        return false;
    }
    let new = [word[0] - 1, word[1]];
    let (from, to) = (u16::from_ne_bytes(word), u16::from_ne_bytes(new));
    p.write_u16(IP_TTL, to).is_ok()
        && p.l3_csum_replace(IP_CSUM, u32::from(from), u32::from(to), 2)
            .is_ok()
}

/// Rewrite the flow's packet to `saddr:sport -> daddr:dport`, fixing the IPv4 and L4 checksums
/// (a UDP checksum of 0, "none", stays 0).
#[inline(always)]
pub fn rewrite<P: Packet>(
    p: &mut P,
    f: &Flow,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
) -> Res {
    let l4_csum = f.l4_csum();
    let udp = if f.proto == PROTO_UDP {
        CSUM_MANGLED_0
    } else {
        0
    };
    if saddr != f.saddr {
        set_addr(p, IP_SADDR, f.saddr, saddr, Some((l4_csum, udp)))?;
    }
    if daddr != f.daddr {
        set_addr(p, IP_DADDR, f.daddr, daddr, Some((l4_csum, udp)))?;
    }
    if sport != f.sport {
        set_port(p, f.l4, f.sport, sport, l4_csum, udp)?;
    }
    if dport != f.dport {
        set_port(p, f.l4 + 2, f.dport, dport, l4_csum, udp)?;
    }
    Ok(())
}

/// Replace an IPv4 address of the outer header; `l4` names the L4 checksum covering it through
/// the pseudo header, with extra `l4_csum_replace` flags.
#[inline(always)]
pub fn set_addr<P: Packet>(
    p: &mut P,
    off: usize,
    old: u32,
    new: u32,
    l4: Option<(usize, u64)>,
) -> Res {
    p.write_u32(off, new)?;
    p.l3_csum_replace(IP_CSUM, old, new, 4)?;
    if let Some((csum, flags)) = l4 {
        p.l4_csum_replace(csum, old, new, CSUM_PSEUDO | flags | 4)?;
    }
    Ok(())
}

/// Replace a 16-bit field covered by the L4 checksum at `csum`.
#[inline(always)]
pub fn set_port<P: Packet>(
    p: &mut P,
    off: usize,
    old: u16,
    new: u16,
    csum: usize,
    flags: u64,
) -> Res {
    p.write_u16(off, new)?;
    p.l4_csum_replace(csum, u32::from(old), u32::from(new), flags | 2)
}
