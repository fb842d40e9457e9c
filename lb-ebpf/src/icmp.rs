//! ICMP errors about NATed flows (port unreachable, fragmentation needed, time exceeded) sent by a
//! backend or a router on its path: the quoted packet and the outer header are reverse-NATed so the
//! client's stack matches the error to its own socket.
use lb_common::{stat, Tuple4, PROTO_TCP, PROTO_UDP};

use crate::{
    csum,
    lb::{reply_action, Action},
    maps::{count, rnat_map},
    nat::set_addr,
    packet::{read, Packet, Res},
    parse::{Flow, Ipv4, IP_DADDR, IP_SADDR},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

pub fn handle_error<P: Packet>(p: &mut P, f: &Flow) -> Action {
    match nat_error(p, f) {
        Ok(Some(action)) => {
            count(stat::ICMP_ERROR_NATED);
            action
        }
        Ok(None) => Action::UNTOUCHED,
        Err(()) => {
            count(stat::DROP_REWRITE);
            Action::DROP
        }
    }
}

/// The quoted packet went out as `inner_src -> backend`; the reply tuple of that flow is its
/// reverse, which is how the reverse NAT table is keyed.
#[inline(always)]
fn nat_error<P: Packet>(p: &mut P, f: &Flow) -> Res<Option<Action>> {
    if f.fragment {
        return Ok(None);
    }
    // Whole headers are read once each (see parse.rs on verifier bounds tracking).
    let Some(icmp) = read::<[u8; 8], P>(p, f.l4) else {
        return Ok(None);
    };
    if icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED {
        return Ok(None);
    }
    let inner = f.l4 + 8;
    let Some(ip) = read::<Ipv4, P>(p, inner) else {
        return Ok(None);
    };
    let Some(inner_ihl) = ip.header_len() else {
        return Ok(None);
    };
    let il4 = inner + inner_ihl;
    let Some([isport, idport]) = read::<[u16; 2], P>(p, il4) else {
        return Ok(None);
    };
    let (proto, isaddr, idaddr) = (ip.proto, ip.saddr, ip.daddr);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let key = Tuple4 {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: read-only copy of the map value.
    let Some(rn) = (unsafe { rnat_map(key.proto).get(&key) }).copied() else {
        return Ok(None);
    };
    let icmp_csum = f.l4 + 2;
    inner_addr(p, inner, 12, isaddr, rn.daddr, icmp_csum)?;
    inner_addr(p, inner, 16, idaddr, rn.saddr, icmp_csum)?;
    inner_port(p, il4, isport, rn.dport, icmp_csum)?;
    inner_port(p, il4 + 2, idport, rn.sport, icmp_csum)?;
    let l4_csum = if proto == PROTO_UDP {
        il4 + 6
    } else {
        il4 + 16
    };
    let changes = [
        (isaddr, rn.daddr),
        (idaddr, rn.saddr),
        (u32::from(isport), u32::from(rn.dport)),
        (u32::from(idport), u32::from(rn.sport)),
    ];
    inner_l4_csum(p, l4_csum, &changes, icmp_csum)?;
    // The ICMP checksum has no pseudo header: outer addresses only touch the IP checksum.
    set_addr(p, IP_DADDR, f.daddr, rn.daddr, None)?;
    if f.saddr == idaddr {
        set_addr(p, IP_SADDR, f.saddr, rn.saddr, None)?;
    }
    Ok(Some(reply_action(rn.flags, rn.daddr)))
}

/// Rewrite an address of the quoted IPv4 header, its header checksum, and the ICMP checksum that
/// covers both.
#[inline(always)]
fn inner_addr<P: Packet>(
    p: &mut P,
    inner: usize,
    field: usize,
    old: u32,
    new: u32,
    icmp_csum: usize,
) -> Res {
    if old == new {
        return Ok(());
    }
    let old_check: u16 = read(p, inner + 10).ok_or(())?;
    let new_check = csum::replace4(old_check, old, new);
    p.write_u32(inner + field, new)?;
    p.write_u16(inner + 10, new_check)?;
    p.l4_csum_replace(icmp_csum, old, new, 4)?;
    p.l4_csum_replace(icmp_csum, u32::from(old_check), u32::from(new_check), 2)
}

/// Fix the quoted L4 checksum when the quote holds it (always for UDP; for TCP when more than 8
/// bytes are quoted, as Linux does): addresses enter it through the pseudo header, ports directly.
/// A UDP checksum of 0 stays 0.
#[inline(always)]
fn inner_l4_csum<P: Packet>(
    p: &mut P,
    off: usize,
    changes: &[(u32, u32); 4],
    icmp_csum: usize,
) -> Res {
    let Some(old) = read::<u16, P>(p, off) else {
        return Ok(());
    };
    if old == 0 {
        return Ok(());
    }
    let mut new = csum::replace4(old, changes[0].0, changes[0].1);
    new = csum::replace4(new, changes[1].0, changes[1].1);
    new = csum::replace2(new, changes[2].0 as u16, changes[2].1 as u16);
    new = csum::replace2(new, changes[3].0 as u16, changes[3].1 as u16);
    p.write_u16(off, new)?;
    p.l4_csum_replace(icmp_csum, u32::from(old), u32::from(new), 2)
}

/// Rewrite a port of the quoted L4 header (its checksum is fixed by `inner_l4_csum`).
#[inline(always)]
fn inner_port<P: Packet>(p: &mut P, off: usize, old: u16, new: u16, icmp_csum: usize) -> Res {
    if old == new {
        return Ok(());
    }
    p.write_u16(off, new)?;
    p.l4_csum_replace(icmp_csum, u32::from(old), u32::from(new), 2)
}
