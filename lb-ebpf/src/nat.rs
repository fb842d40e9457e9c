//! Address and port rewrites with incremental checksum updates.
use lb_common::PROTO_UDP;

use crate::{
    packet::{Packet, Res, CSUM_MANGLED_0, CSUM_PSEUDO},
    parse::{Flow, IP_CSUM, IP_DADDR, IP_SADDR},
};

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
