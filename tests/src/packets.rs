//! Test packets built and checked with etherparse, so checksums are computed by a well-kept
//! packet crate and not by lb's own code.
use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    icmpv4::DestUnreachableHeader, EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type,
    IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, SlicedPacket, TcpHeader, TransportSlice,
    UdpHeader,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with flags (etherparse names) and sequence/ack numbers.
    Tcp {
        syn: bool,
        ack: Option<u32>,
        fin: bool,
        rst: bool,
        seq: u32,
    },
    /// UDP; `checksum: false` sends 0 ("no checksum").
    Udp { checksum: bool },
}

pub const SYN: L4 = L4::Tcp {
    syn: true,
    ack: None,
    fin: false,
    rst: false,
    seq: 1000,
};
pub const ACK: L4 = L4::Tcp {
    syn: false,
    ack: Some(5000),
    fin: false,
    rst: false,
    seq: 1001,
};
pub const UDP: L4 = L4::Udp { checksum: true };

/// A TCP or UDP packet in an Ethernet frame, described by the fields a load balancer rewrites.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub ip_options: Vec<u8>,
    /// (more fragments, offset in 8-byte units)
    pub frag: (bool, u16),
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ttl: u8,
    /// Don't fragment (set unless a test clears it).
    pub df: bool,
}

pub fn sa(s: &str) -> SocketAddrV4 {
    s.parse()
        .unwrap_or_else(|e| panic!("bad socket address {s}: {e}"))
}

impl Pkt {
    pub fn new(src: &str, dst: &str, l4: L4) -> Pkt {
        Pkt {
            src: sa(src),
            dst: sa(dst),
            l4,
            payload: b"hello".to_vec(),
            ip_options: Vec::new(),
            frag: (false, 0),
            src_mac: CLIENT_MAC,
            dst_mac: NODE_MAC,
            ttl: 64,
            df: true,
        }
    }

    /// The same packet one router further: what lb transmits when it forwards a packet itself.
    pub fn hop(&self) -> Pkt {
        Pkt {
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    pub fn ttl(mut self, ttl: u8) -> Pkt {
        self.ttl = ttl;
        self
    }

    /// The same packet with other addresses (what NAT should produce).
    pub fn nat(&self, src: &str, dst: &str) -> Pkt {
        Pkt {
            src: sa(src),
            dst: sa(dst),
            ..self.clone()
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Pkt {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    fn ip_header(&self, proto: IpNumber, payload_len: usize) -> Ipv4Header {
        let mut ip = Ipv4Header::new(
            payload_len as u16,
            self.ttl,
            proto,
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .expect("ipv4 header");
        ip.options = Ipv4Options::try_from(&self.ip_options[..]).expect("ip options");
        ip.dont_fragment = self.df;
        ip.more_fragments = self.frag.0;
        ip.fragment_offset = IpFragOffset::try_new(self.frag.1).expect("fragment offset");
        ip.set_payload_len(payload_len).expect("payload length");
        ip.header_checksum = ip.calc_header_checksum();
        ip
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let proto = match self.l4 {
            L4::Tcp {
                syn,
                ack,
                fin,
                rst,
                seq,
            } => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), seq, 64240);
                tcp.syn = syn;
                tcp.fin = fin;
                tcp.rst = rst;
                if let Some(n) = ack {
                    tcp.ack = true;
                    tcp.acknowledgment_number = n;
                }
                let ip = self.ip_header(IpNumber::TCP, tcp.header_len() + self.payload.len());
                tcp.checksum = tcp
                    .calc_checksum_ipv4(&ip, &self.payload)
                    .expect("tcp checksum");
                tcp.write(&mut l4).expect("write tcp");
                IpNumber::TCP
            }
            L4::Udp { checksum } => {
                let ip = self.ip_header(IpNumber::UDP, 8 + self.payload.len());
                let mut udp = UdpHeader::with_ipv4_checksum(
                    self.src.port(),
                    self.dst.port(),
                    &ip,
                    &self.payload,
                )
                .expect("udp header");
                if !checksum {
                    udp.checksum = 0;
                }
                udp.write(&mut l4).expect("write udp");
                IpNumber::UDP
            }
        };
        l4.extend_from_slice(&self.payload);
        frame(
            self.src_mac,
            self.dst_mac,
            &self.ip_header(proto, l4.len()),
            &l4,
        )
    }
}

/// Ethernet + IPv4 header + L4 bytes.
pub fn frame(src_mac: [u8; 6], dst_mac: [u8; 6], ip: &Ipv4Header, l4: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: src_mac,
        destination: dst_mac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .expect("write ethernet");
    ip.write(&mut out).expect("write ipv4");
    out.extend_from_slice(l4);
    out
}

/// What a reject of `p` must look like: a TCP RST (RFC 793 rules) or an ICMP port unreachable
/// quoting the IP header and 8 bytes of `p`, from the frontend to the client, MACs swapped, with
/// lb's IPv4 header choices (TTL 64, DF, id 0).
pub fn reject_of(p: &Pkt) -> Vec<u8> {
    let (src, dst) = (p.dst, p.src);
    let (proto, l4) = match p.l4 {
        L4::Tcp {
            syn, ack, fin, seq, ..
        } => {
            let mut tcp = TcpHeader::new(src.port(), dst.port(), 0, 0);
            tcp.rst = true;
            match ack {
                Some(n) => tcp.sequence_number = n,
                None => {
                    let len = p.payload.len() as u32 + u32::from(syn) + u32::from(fin);
                    tcp.ack = true;
                    tcp.acknowledgment_number = seq.wrapping_add(len);
                }
            }
            let ip = reject_ip(src, dst, IpNumber::TCP, tcp.header_len());
            tcp.checksum = tcp.calc_checksum_ipv4(&ip, &[]).expect("tcp checksum");
            let mut l4 = Vec::new();
            tcp.write(&mut l4).expect("write tcp");
            (IpNumber::TCP, l4)
        }
        L4::Udp { .. } => {
            let original = p.build();
            let quote_len = 20 + p.ip_options.len() + 8;
            let quote = &original[14..14 + quote_len];
            let icmp = Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                quote,
            );
            let mut l4 = Vec::new();
            icmp.write(&mut l4).expect("write icmp");
            l4.extend_from_slice(quote);
            (IpNumber::ICMP, l4)
        }
    };
    let ip = reject_ip(src, dst, proto, l4.len());
    frame(p.dst_mac, p.src_mac, &ip, &l4)
}

fn reject_ip(src: SocketAddrV4, dst: SocketAddrV4, proto: IpNumber, len: usize) -> Ipv4Header {
    let mut ip =
        Ipv4Header::new(len as u16, 64, proto, src.ip().octets(), dst.ip().octets()).expect("ip");
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    ip
}

/// An ICMP error (type/code given by `icmp_type`) from `from` about packet `about`, quoting its
/// IP header and first 8 payload bytes, with `ttl` hops left.
pub fn icmp_error(
    from: Ipv4Addr,
    about: &Pkt,
    icmp_type: Icmpv4Type,
    macs: ([u8; 6], [u8; 6]),
    ttl: u8,
) -> Vec<u8> {
    let original = about.build();
    let quote = &original[14..14 + 20 + about.ip_options.len() + 8];
    let icmp = Icmpv4Header::with_checksum(icmp_type, quote);
    let mut l4 = Vec::new();
    icmp.write(&mut l4).expect("write icmp");
    l4.extend_from_slice(quote);
    let mut ip = Ipv4Header::new(
        l4.len() as u16,
        ttl,
        IpNumber::ICMP,
        from.octets(),
        about.src.ip().octets(),
    )
    .expect("ip");
    ip.header_checksum = ip.calc_header_checksum();
    frame(macs.0, macs.1, &ip, &l4)
}

/// Check every checksum of an IPv4 frame with etherparse: the IPv4 header's, and the TCP, UDP
/// (unless 0) or ICMP one. Panics naming the one that is wrong.
pub fn assert_checksums(frame: &[u8]) {
    if let Err(e) = checksums(frame) {
        panic!("{e}");
    }
}

/// [`assert_checksums`] as a result: which checksum is wrong, or what does not parse.
pub fn checksums(frame: &[u8]) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(frame).map_err(|e| format!("output parses: {e}"))?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        return Err("output is not IPv4".into());
    };
    let header = ip.header().to_header();
    let check = |what: &str, got: u16, want: Option<u16>| match want {
        Some(want) if got == want => Ok(()),
        _ => Err(format!("{what} checksum: {got:#06x}, want {want:04x?}")),
    };
    check(
        "IPv4 header",
        header.header_checksum,
        Some(header.calc_header_checksum()),
    )?;
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = tcp.to_header().calc_checksum_ipv4(&header, tcp.payload());
            check("TCP", tcp.checksum(), want.ok())
        }
        Some(TransportSlice::Udp(udp)) if udp.checksum() != 0 => {
            let want = udp.to_header().calc_checksum_ipv4(&header, udp.payload());
            check("UDP", udp.checksum(), want.ok())
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let want = icmp.icmp_type().calc_checksum(icmp.payload());
            check("ICMP", icmp.checksum(), Some(want))
        }
        _ => Ok(()),
    }
}
