//! Internet checksum arithmetic (RFC 1071/1624). Values are taken as they sit in memory: the
//! one's-complement sum does not depend on byte order as long as data and checksum agree.

/// Fold a 32-bit-or-wider running sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    // Four rounds always suffice for a u64; a fixed count keeps the verifier happy.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit field went from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    !fold(u64::from(!check) + u64::from(!from) + u64::from(to))
}

/// The checksum after a 32-bit field went from `from` to `to`.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let sum = u64::from(!check)
        + u64::from(!from & 0xffff)
        + u64::from(!from >> 16)
        + u64::from(to & 0xffff)
        + u64::from(to >> 16);
    !fold(sum)
}

/// Sum of the 16-bit words of a header built on the stack.
#[inline(always)]
pub fn sum_words(words: &[u16]) -> u64 {
    let mut sum = 0u64;
    for w in words {
        sum += u64::from(*w);
    }
    sum
}

/// The memory bytes of a u32 address split into the two 16-bit words it occupies.
#[inline(always)]
pub fn addr_words(addr: u32) -> u64 {
    u64::from(addr & 0xffff) + u64::from(addr >> 16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, vec::Vec};

    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    /// Offsets in an Ethernet + IPv4 (no options) frame.
    const IP_CHECK: usize = 14 + 10;
    const IP_DST: usize = 14 + 16;
    const L4: usize = 14 + 20;

    fn frame(udp: bool, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4([10, 0, 0, 1], dst, 64);
        let payload = b"lb checksum test, odd length";
        let mut out = Vec::new();
        if udp {
            b.udp(40000, dst_port).write(&mut out, payload).unwrap();
        } else {
            let b = b.tcp(40000, dst_port, 7, 64240).syn();
            b.write(&mut out, payload).unwrap();
        }
        out
    }

    fn word(f: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([f[at], f[at + 1]])
    }

    fn put(f: &mut [u8], at: usize, v: u16) {
        f[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }

    /// Rewrite the destination address and port as lb's DNAT does, updating both checksums
    /// incrementally.
    fn dnat(f: &mut [u8], udp: bool, addr: [u8; 4], port: u16) {
        let l4_check = L4 + if udp { 6 } else { 16 };
        let old_addr = u32::from_ne_bytes(f[IP_DST..IP_DST + 4].try_into().unwrap());
        let new_addr = u32::from_ne_bytes(addr);
        let old_port = word(f, L4 + 2);
        let new_port = u16::from_ne_bytes(port.to_be_bytes());
        put(f, IP_CHECK, replace4(word(f, IP_CHECK), old_addr, new_addr));
        let mut check = word(f, l4_check);
        check = replace4(check, old_addr, new_addr);
        check = replace2(check, old_port, new_port);
        put(f, l4_check, check);
        f[IP_DST..IP_DST + 4].copy_from_slice(&addr);
        put(f, L4 + 2, new_port);
    }

    /// The checksums as they are and as etherparse recomputes them: (IP, L4) each.
    fn checksums(f: &[u8]) -> ((u16, u16), (u16, u16)) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        let header = ip.header().to_header();
        let ip_sums = (header.header_checksum, header.calc_header_checksum());
        let payload = ip.payload().payload;
        let l4_sums = match p.transport {
            Some(TransportSlice::Tcp(t)) => {
                let h = t.to_header();
                let calc = h.calc_checksum_ipv4(&header, t.payload()).unwrap();
                (h.checksum, calc)
            }
            Some(TransportSlice::Udp(u)) => {
                let h = u.to_header();
                let calc = h.calc_checksum_ipv4(&header, u.payload()).unwrap();
                (h.checksum, calc)
            }
            _ => panic!("no L4 in {} bytes", payload.len()),
        };
        (ip_sums, l4_sums)
    }

    /// Incremental updates (RFC 1624) give what a full recomputation gives, for TCP and UDP,
    /// over addresses and ports whose words carry, wrap and reach 0 and 0xffff.
    #[test]
    fn incremental_updates_match_a_full_recomputation() {
        let addrs = [
            [10, 96, 0, 10],
            [255, 255, 255, 255],
            [0, 0, 0, 1],
            [192, 0, 2, 10],
        ];
        let ports = [80u16, 0xffff, 1, 30080];
        for udp in [false, true] {
            for (from, to) in addrs.iter().zip(addrs.iter().rev()) {
                for (from_port, to_port) in ports.iter().zip(ports.iter().rev()) {
                    let mut f = frame(udp, *from, *from_port);
                    dnat(&mut f, udp, *to, *to_port);
                    let ((ip, ip_calc), (l4, l4_calc)) = checksums(&f);
                    let what = format!("udp={udp} {from:?}:{from_port} -> {to:?}:{to_port}");
                    assert_eq!(ip, ip_calc, "{what}: IP header checksum");
                    assert_eq!(l4, l4_calc, "{what}: L4 checksum");
                }
            }
        }
    }

    #[test]
    fn fold_carries_every_round() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        // A sum of header words folds to the checksum's complement.
        let words = [
            0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        assert_eq!(!fold(sum_words(&words)), 0xb861);
        assert_eq!(addr_words(0x0001_c0a8), 0xc0a9);
    }
}
