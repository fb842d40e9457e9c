//! ICMP errors and resets that lb answers itself, built in place of the packet from its
//! destination to its source; the caller bounces the result back out of the ingress interface
//! with the MAC addresses swapped:
//! - for a frontend without endpoints: a TCP RST for TCP, an ICMP port unreachable for UDP, from
//!   the frontend to the client;
//! - for a packet lb forwards that is too big for the path and has DF set: ICMP fragmentation
//!   needed, translated back as an error from the path would be (`icmp::handle_error`).
use aya_ebpf::helpers::generated as gen;
use lb_common::{csum, PROTO_ICMP, PROTO_TCP};

use crate::{
    icmp,
    lb::Verdict,
    packet::{read, Packet, Res},
    parse::{parse, Flow, ETH_LEN, IP_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
    window: u16,
    csum: u16,
    urg: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    csum: u16,
    rest: u32,
}

const IP_DF: u16 = 0x4000;
const TTL: u8 = 64;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// The largest quote: an IPv4 header with options plus 8 bytes of its payload (RFC 792).
const QUOTE_MAX: usize = 60 + 8;

#[inline(always)]
fn words<T>(v: &T) -> u64 {
    // SAFETY: the header structs are repr(C) without padding and an even number of bytes long.
    let w = unsafe {
        core::slice::from_raw_parts(v as *const T as *const u16, core::mem::size_of::<T>() / 2)
    };
    csum::sum_words(w)
}

#[inline(always)]
fn ipv4(f: &Flow, proto: u8, payload: usize) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: ((20 + payload) as u16).to_be(),
        id: 0,
        frag_off: IP_DF.to_be(),
        ttl: TTL,
        proto,
        csum: 0,
        saddr: f.daddr,
        daddr: f.saddr,
    };
    ip.csum = !csum::fold(words(&ip));
    ip
}

pub fn build<P: Packet>(p: &mut P, f: &Flow) -> Res {
    if f.proto == PROTO_TCP {
        tcp_rst(p, f)
    } else {
        icmp_error(p, f, ICMP_PORT_UNREACH, 0)
    }
}

/// RFC 1191: the packet (as lb translated it, about to be forwarded) does not fit the next hop's
/// `mtu` and may not be fragmented. It becomes "fragmentation needed" from its destination to
/// its source quoting it, then goes through the translation of ICMP errors about NATed flows, so
/// that its sender gets it about the packet it sent (a client: from the frontend; a backend
/// whose reply lb reverse-NATed: from the address it sent the reply to). Not inlined: its own frame, beside the
/// load-balancing core's.
#[inline(never)]
pub fn frag_needed<P: Packet>(p: &mut P, mtu: u16) -> Res {
    let f = parse(p).ok_or(())?;
    // The next-hop MTU is the low half of the header's second word (RFC 1191).
    icmp_error(p, &f, ICMP_FRAG_NEEDED, u32::from(mtu).to_be())?;
    let f = parse(p).ok_or(())?;
    match icmp::handle_error(p, &f).verdict {
        Verdict::Untouched | Verdict::Drop => Err(()),
        _ => Ok(()),
    }
}

/// RFC 793 reset generation: if the segment had ACK, RST with seq = its ack; else RST|ACK
/// acknowledging everything it occupied.
#[inline(always)]
fn tcp_rst<P: Packet>(p: &mut P, f: &Flow) -> Res {
    if f.tcp_flags & TCP_RST != 0 {
        return Err(()); // never answer a reset
    }
    let eth: [u8; ETH_LEN] = read(p, 0).ok_or(())?;
    let mut seg_len = f.ip_len.saturating_sub(f.l4 - IP_OFF + f.tcp_hlen) as u32;
    if f.tcp_flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if f.tcp_flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let mut tcp = TcpHdr {
        sport: f.dport,
        dport: f.sport,
        seq: 0,
        ack: 0,
        doff: 5 << 4,
        flags: TCP_RST,
        window: 0,
        csum: 0,
        urg: 0,
    };
    if f.tcp_flags & TCP_ACK != 0 {
        tcp.seq = f.tcp_ack;
    } else {
        tcp.ack = u32::from_be(f.tcp_seq).wrapping_add(seg_len).to_be();
        tcp.flags |= TCP_ACK;
    }
    let ip = ipv4(f, PROTO_TCP, 20);
    let pseudo = csum::addr_words(ip.saddr)
        + csum::addr_words(ip.daddr)
        + u64::from(u16::from(PROTO_TCP).to_be())
        + u64::from(20u16.to_be());
    tcp.csum = !csum::fold(pseudo + words(&tcp));
    p.resize(ETH_LEN + 40)?;
    p.store_bytes(0, &eth)?;
    store(p, ETH_LEN, &ip)?;
    store(p, ETH_LEN + 20, &tcp)
}

/// RFC 1122: an ICMP destination unreachable (`code`, `rest` its second word in network order)
/// quoting the IP header and the first 8 bytes of the datagram.
#[inline(always)]
fn icmp_error<P: Packet>(p: &mut P, f: &Flow, code: u8, rest: u32) -> Res {
    let eth: [u8; ETH_LEN] = read(p, 0).ok_or(())?;
    let quote = f.l4 - IP_OFF + 8;
    if !(28..=QUOTE_MAX).contains(&quote) {
        return Err(());
    }
    let mut buf = [0u32; QUOTE_MAX / 4];
    // SAFETY: `quote` is at most the buffer's size; the helper bounds-checks the packet.
    let q = unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, quote) };
    p.load_bytes(IP_OFF, q)?;
    let mut icmp = IcmpHdr {
        ty: ICMP_DEST_UNREACH,
        code,
        csum: 0,
        rest,
    };
    // SAFETY: csum_diff reads `quote` bytes (a multiple of 4) of our buffer.
    let quoted =
        unsafe { gen::bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr(), quote as u32, 0) };
    icmp.csum = !csum::fold(words(&icmp) + (quoted as u64 & 0xffff_ffff));
    let ip = ipv4(f, PROTO_ICMP, 8 + quote);
    p.resize(ETH_LEN + 28 + quote)?;
    p.store_bytes(0, &eth)?;
    store(p, ETH_LEN, &ip)?;
    store(p, ETH_LEN + 20, &icmp)?;
    // SAFETY: reading back the `quote` bytes loaded above.
    p.store_bytes(ETH_LEN + 28, unsafe {
        core::slice::from_raw_parts(buf.as_ptr() as *const u8, quote)
    })
}

#[inline(always)]
fn store<T, P: Packet>(p: &mut P, off: usize, v: &T) -> Res {
    // SAFETY: header structs are plain bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>())
    };
    p.store_bytes(off, bytes)
}
