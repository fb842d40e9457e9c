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
