//! ICMP errors about NATed flows (port unreachable, fragmentation needed, time exceeded), from
//! either side, translated so that the stack they reach matches them to its own socket:
//! - sent by a backend or a router on its path, about a request lb translated: reverse-NATed
//!   towards the client;
//! - sent by the client or a router on its path, about a reply lb reverse-NATed (above all
//!   "fragmentation needed" from a link narrower than the backend's: path MTU discovery through
//!   a Service): NATed towards the backend, as the flow's requests are.
use lb_common::{csum, stat, Tuple4, CT_F_SNAT, PROTO_TCP, PROTO_UDP};

use crate::{
    lb::{action_for, reply_action, Action},
    maps::{count, ct_map, rnat_map},
    nat::set_addr,
    packet::{read, Packet, Res},
    parse::{Flow, Ipv4, IP_DADDR, IP_SADDR},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Inlined: out of line, its frame would stack under the load-balancing core's (Linux 6.1
/// allows 512 bytes for the whole chain).
#[inline(always)]
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

/// What the quoted packet's addresses and ports become, and where the error then goes.
struct Translation {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    action: Action,
}

/// The translation for an error quoting `q` (its source, destination and ports, as quoted).
#[inline(always)]
fn translation(q: &Tuple4) -> Option<Translation> {
    // A request lb translated went out as client -> backend: the reverse of the quote is the
    // reply tuple, which is how the reverse NAT table is keyed.
    let reply = Tuple4 {
        saddr: q.daddr,
        daddr: q.saddr,
        sport: q.dport,
        dport: q.sport,
        ..*q
    };
    // SAFETY: read-only use of map values within this run.
    if let Some(rn) = unsafe { rnat_map(q.proto).get(&reply) } {
        return Some(Translation {
            saddr: rn.daddr,
            daddr: rn.saddr,
            sport: rn.dport,
            dport: rn.sport,
            action: reply_action(rn.flags, rn.daddr),
        });
    }
    // A reply lb reverse-NATed went out as frontend -> client: the reverse of the quote is the
    // flow's conntrack key. Towards the backend it was backend -> client (or -> the SNAT port).
    let ct = unsafe { ct_map(q.proto).get(&reply) }?;
    let (daddr, dport) = if ct.flags & CT_F_SNAT != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (q.daddr, q.dport)
    };
    Some(Translation {
        saddr: ct.backend_addr,
        daddr,
        sport: ct.backend_port,
        dport,
        action: action_for(ct.flags, ct.backend_addr),
    })
}

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
    let quote = Tuple4 {
        saddr: isaddr,
        daddr: idaddr,
        sport: isport,
        dport: idport,
        proto,
        _pad: [0; 3],
    };
    let Some(t) = translation(&quote) else {
        return Ok(None);
    };
    let icmp_csum = f.l4 + 2;
    inner_addr(p, inner, 12, isaddr, t.saddr, icmp_csum)?;
    inner_addr(p, inner, 16, idaddr, t.daddr, icmp_csum)?;
    inner_port(p, il4, isport, t.sport, icmp_csum)?;
    inner_port(p, il4 + 2, idport, t.dport, icmp_csum)?;
    let l4_csum = if proto == PROTO_UDP {
        il4 + 6
    } else {
        il4 + 16
    };
    let changes = [
        (isaddr, t.saddr),
        (idaddr, t.daddr),
        (u32::from(isport), u32::from(t.sport)),
        (u32::from(idport), u32::from(t.dport)),
    ];
    inner_l4_csum(p, l4_csum, &changes, icmp_csum)?;
    // The error goes to whoever now sent the quoted packet; one the quoted packet's destination
    // sent itself comes from where that destination now is. The ICMP checksum has no pseudo
    // header: outer addresses only touch the IP checksum.
    set_addr(p, IP_DADDR, f.daddr, t.saddr, None)?;
    if f.saddr == idaddr {
        set_addr(p, IP_SADDR, f.saddr, t.daddr, None)?;
    }
    Ok(Some(t.action))
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
