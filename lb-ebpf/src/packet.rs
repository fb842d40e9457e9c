//! One interface over XDP and TC packets, so parsing, NAT and rejects are written once.
//!
//! Reads go through direct packet access (bounds-checked `ptr_at`). Field rewrites and checksum
//! updates are primitives with the semantics of the kernel's `bpf_l3/l4_csum_replace`: on TC the
//! helpers themselves (they know about CHECKSUM_PARTIAL skbs), on XDP the same arithmetic in place.
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated as gen,
    programs::{TcContext, XdpContext},
    EbpfContext,
};

use lb_common::csum;

pub type Res<T = ()> = Result<T, ()>;

/// `flags` of `l4_csum_replace`: the low bits give the field size (2 or 4).
pub const CSUM_PSEUDO: u64 = BPF_F_PSEUDO_HDR as u64;
pub const CSUM_MANGLED_0: u64 = BPF_F_MARK_MANGLED_0 as u64;

pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Make the first `len` bytes directly readable (TC skbs can be non-linear).
    fn ensure(&mut self, len: usize);
    fn write_u16(&mut self, off: usize, v: u16) -> Res;
    fn write_u32(&mut self, off: usize, v: u32) -> Res;
    fn l3_csum_replace(&mut self, off: usize, from: u32, to: u32, size: u64) -> Res;
    fn l4_csum_replace(&mut self, off: usize, from: u32, to: u32, flags: u64) -> Res;
    fn load_bytes(&self, off: usize, buf: &mut [u8]) -> Res;
    fn store_bytes(&mut self, off: usize, buf: &[u8]) -> Res;
    /// Grow or shrink the packet to `len` bytes (contents then rewritten by the caller).
    fn resize(&mut self, len: usize) -> Res;
    fn fib_lookup(&mut self, params: &mut bpf_fib_lookup) -> i64;
    /// Whether the packet is larger than its ingress device carries: segments GRO merged before
    /// lb saw it (TC, and generic XDP, run after GRO), which the stack splits again on transmit.
    fn aggregate(&mut self) -> bool;

    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }
}

/// A pointer to a `T` at `off`, if the packet holds it.
#[inline(always)]
pub fn ptr_at<T, P: Packet + ?Sized>(p: &P, off: usize) -> Option<*mut T> {
    let start = p.data();
    if start + off + core::mem::size_of::<T>() > p.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy, P: Packet + ?Sized>(p: &P, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds; packet data has no alignment guarantee.
    ptr_at::<T, P>(p, off).map(|ptr| unsafe { ptr.read_unaligned() })
}

#[inline(always)]
pub fn write_at<T, P: Packet + ?Sized>(p: &P, off: usize, v: T) -> Res {
    let ptr = ptr_at::<T, P>(p, off).ok_or(())?;
    // SAFETY: bounds checked above.
    unsafe { ptr.write_unaligned(v) };
    Ok(())
}

/// Swap the frame's MAC addresses, to send it back where it came from.
#[inline(always)]
pub fn swap_macs<P: Packet>(p: &mut P) -> bool {
    let Some(macs) = read::<[u8; 12], P>(p, 0) else {
        return false;
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    p.store_bytes(0, &swapped).is_ok()
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn ensure(&mut self, _len: usize) {}
    #[inline(always)]
    fn write_u16(&mut self, off: usize, v: u16) -> Res {
        write_at(self, off, v)
    }
    #[inline(always)]
    fn write_u32(&mut self, off: usize, v: u32) -> Res {
        write_at(self, off, v)
    }
    #[inline(always)]
    fn l3_csum_replace(&mut self, off: usize, from: u32, to: u32, size: u64) -> Res {
        // One checked pointer for the read and the write (the verifier tracks bounds per pointer).
        let ptr = ptr_at::<u16, Self>(self, off).ok_or(())?;
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            let check = ptr.read_unaligned();
            ptr.write_unaligned(if size == 2 {
                csum::replace2(check, from as u16, to as u16)
            } else {
                csum::replace4(check, from, to)
            });
        }
        Ok(())
    }
    #[inline(always)]
    fn l4_csum_replace(&mut self, off: usize, from: u32, to: u32, flags: u64) -> Res {
        let ptr = ptr_at::<u16, Self>(self, off).ok_or(())?;
        // SAFETY: bounds checked by ptr_at.
        let check = unsafe { ptr.read_unaligned() };
        let mangled_0 = flags & CSUM_MANGLED_0 != 0;
        if mangled_0 && check == 0 {
            // UDP without checksum stays without.
            return Ok(());
        }
        let mut new = if flags & 0xf == 2 {
            csum::replace2(check, from as u16, to as u16)
        } else {
            csum::replace4(check, from, to)
        };
        if mangled_0 && new == 0 {
            new = 0xffff;
        }
        // SAFETY: as above.
        unsafe { ptr.write_unaligned(new) };
        Ok(())
    }
    #[inline(always)]
    fn load_bytes(&self, off: usize, buf: &mut [u8]) -> Res {
        // SAFETY: the helper checks bounds against the packet and the buffer length.
        let rc = unsafe {
            gen::bpf_xdp_load_bytes(
                self.0.ctx,
                off as u32,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
            )
        };
        ok(rc)
    }
    #[inline(always)]
    fn store_bytes(&mut self, off: usize, buf: &[u8]) -> Res {
        // SAFETY: as above; the helper only reads `buf`.
        let rc = unsafe {
            gen::bpf_xdp_store_bytes(
                self.0.ctx,
                off as u32,
                buf.as_ptr() as *mut _,
                buf.len() as u32,
            )
        };
        ok(rc)
    }
    #[inline(always)]
    fn resize(&mut self, len: usize) -> Res {
        let delta = len as i32 - self.len() as i32;
        // Grow at the head (drivers and test runs keep 256 bytes of headroom), shrink at the tail.
        // SAFETY: plain helper calls on our own context.
        let rc = unsafe {
            if delta > 0 {
                gen::bpf_xdp_adjust_head(self.0.ctx, -delta)
            } else if delta < 0 {
                gen::bpf_xdp_adjust_tail(self.0.ctx, delta)
            } else {
                0
            }
        };
        ok(rc)
    }
    #[inline(always)]
    fn fib_lookup(&mut self, params: &mut bpf_fib_lookup) -> i64 {
        fib(self.0.as_ptr(), params)
    }
    #[inline(always)]
    fn aggregate(&mut self) -> bool {
        let mut len = 0u32;
        // SAFETY: plain helper call on our own context; it checks the packet against the
        // ingress device's MTU and writes that MTU to `len`.
        unsafe { gen::bpf_check_mtu(self.0.ctx.cast(), 0, &mut len, 0, 0) != 0 }
    }
}

pub struct Tc<'a>(pub &'a TcContext);

/// A helper's return code as a result.
#[inline(always)]
fn ok(rc: i64) -> Res {
    if rc == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// bpf_fib_lookup for either program type (the helper takes the context as is).
#[inline(always)]
fn fib(ctx: *mut core::ffi::c_void, params: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: params is a valid, fully initialised struct of the size passed.
    unsafe {
        gen::bpf_fib_lookup(
            ctx,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

fn rc(r: Result<(), i64>) -> Res {
    r.map_err(|_| ())
}

impl Packet for Tc<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is the program's own skb.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn ensure(&mut self, len: usize) {
        let want = core::cmp::min(len as u32, self.0.len());
        if self.len() < want as usize {
            // On failure the later bounds checks fail and the packet is passed untouched.
            let _ = self.0.pull_data(want);
        }
    }
    #[inline(always)]
    fn write_u16(&mut self, off: usize, v: u16) -> Res {
        rc(self.0.store(off, &v, 0))
    }
    #[inline(always)]
    fn write_u32(&mut self, off: usize, v: u32) -> Res {
        rc(self.0.store(off, &v, 0))
    }
    #[inline(always)]
    fn l3_csum_replace(&mut self, off: usize, from: u32, to: u32, size: u64) -> Res {
        rc(self
            .0
            .l3_csum_replace(off, u64::from(from), u64::from(to), size))
    }
    #[inline(always)]
    fn l4_csum_replace(&mut self, off: usize, from: u32, to: u32, flags: u64) -> Res {
        rc(self
            .0
            .l4_csum_replace(off, u64::from(from), u64::from(to), flags))
    }
    #[inline(always)]
    fn load_bytes(&self, off: usize, buf: &mut [u8]) -> Res {
        // SAFETY: the helper bounds-checks the skb and writes `buf.len()` bytes into `buf`.
        let r = unsafe {
            gen::bpf_skb_load_bytes(
                self.0.skb.skb as *const _,
                off as u32,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
            )
        };
        ok(r)
    }
    #[inline(always)]
    fn store_bytes(&mut self, off: usize, buf: &[u8]) -> Res {
        // SAFETY: the helper checks bounds against the skb and reads `buf.len()` bytes of `buf`.
        let r = unsafe {
            gen::bpf_skb_store_bytes(
                self.0.skb.skb,
                off as u32,
                buf.as_ptr() as *const _,
                buf.len() as u32,
                0,
            )
        };
        ok(r)
    }
    #[inline(always)]
    fn resize(&mut self, len: usize) -> Res {
        // SAFETY: plain helper call on our own skb.
        let r = unsafe { gen::bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        ok(r)
    }
    #[inline(always)]
    fn fib_lookup(&mut self, params: &mut bpf_fib_lookup) -> i64 {
        fib(self.0.as_ptr(), params)
    }
    #[inline(always)]
    fn aggregate(&mut self) -> bool {
        // The kernel's skb FIB lookup never reports a GSO skb as too big: asked only otherwise.
        false
    }
}
