//! The echo protocol shared by the `lb-echo` binary and the in-process clients.
//!
//! A client sends a line (TCP; several per connection are fine) or a datagram (UDP); the server
//! answers each with `NAME PEER_IP:PEER_PORT\n`: which server answered, and the source address it
//! saw. A request `lb-echo BYTES` asks for a reply of BYTES bytes: the same line, padded with dots
//! before its newline (large replies: path MTU, fragments); a request may be padded with dots
//! itself (large requests). UDP replies are sent from the address
//! the request was sent to (IP_PKTINFO), as a real service would, so a client's connected socket
//! accepts them.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The line `lb-echo serve` prints to stdout once it listens (followed by proto and address).
pub const READY: &str = "READY";

/// `lb-echo request` exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_REFUSED: i32 = 3;
pub const EXIT_TIMEOUT: i32 = 4;
pub const EXIT_UNREACHABLE: i32 = 5;
pub const EXIT_RESET: i32 = 6;

/// What the client sends.
const REQUEST: &str = "lb-echo";
/// The largest padded reply a server sends.
const REPLY_MAX: usize = 16 << 20;

/// The request line (newline included) asking for a reply of `bytes` (0: unpadded).
/// A request for a reply of `reply` bytes (0: unpadded), itself padded to `size` bytes.
fn request_line(reply: usize, size: usize) -> Vec<u8> {
    let mut line = match reply {
        0 => REQUEST.to_string().into_bytes(),
        n => format!("{REQUEST} {n}").into_bytes(),
    };
    if size > line.len() + 1 {
        line.resize(size - 1, b'.');
    }
    line.push(b'\n');
    line
}

/// The reply to request `line` from server `name` to `peer`.
fn reply_to(line: &[u8], name: &str, peer: SocketAddr) -> Vec<u8> {
    let mut reply = format!("{name} {peer}").into_bytes();
    let asked = std::str::from_utf8(line)
        .ok()
        .and_then(|l| {
            l.trim_end()
                .trim_end_matches('.')
                .strip_prefix(REQUEST)?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0)
        .min(REPLY_MAX);
    if asked > reply.len() + 1 {
        reply.push(b' ');
        reply.resize(asked - 1, b'.');
    }
    reply.push(b'\n');
    reply
}

/// A parsed echo reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `--name` of the server that answered.
    pub name: String,
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// The reply's length in bytes (newline included).
    pub bytes: usize,
}

impl FromStr for Reply {
    type Err = RequestError;

    fn from_str(line: &str) -> Result<Reply, RequestError> {
        let bad = || RequestError::Other(format!("unexpected reply {line:?}"));
        let mut fields = line.trim_end().splitn(3, ' ');
        let (Some(name), Some(peer)) = (fields.next(), fields.next()) else {
            return Err(bad());
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(Reply {
            name: name.to_string(),
            peer: peer.parse().map_err(|_| bad())?,
            bytes: line.len(),
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.peer)
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// TCP RST to the SYN, or ICMP port unreachable for UDP.
    Refused,
    /// Nothing came back in time (dropped).
    Timeout,
    /// ICMP host/network unreachable, or no route.
    Unreachable(String),
    /// The connection was reset after it was established.
    Reset,
    /// Anything else (bad reply, local error).
    Other(String),
}

impl RequestError {
    /// The `lb-echo request` exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            RequestError::Refused => EXIT_REFUSED,
            RequestError::Timeout => EXIT_TIMEOUT,
            RequestError::Unreachable(_) => EXIT_UNREACHABLE,
            RequestError::Reset => EXIT_RESET,
            RequestError::Other(_) => EXIT_ERROR,
        }
    }

    /// Maps an `lb-echo request` exit code (and its stderr) back; `None` for success.
    pub fn from_exit_code(code: i32, stderr: &str) -> Option<RequestError> {
        Some(match code {
            EXIT_OK => return None,
            EXIT_REFUSED => RequestError::Refused,
            EXIT_TIMEOUT => RequestError::Timeout,
            EXIT_UNREACHABLE => RequestError::Unreachable(stderr.trim().to_string()),
            EXIT_RESET => RequestError::Reset,
            _ => RequestError::Other(format!("exit code {code}: {}", stderr.trim())),
        })
    }

    /// First word of the `lb-echo request` error message (`refused`, `timeout`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::Refused => "refused",
            RequestError::Timeout => "timeout",
            RequestError::Unreachable(_) => "unreachable",
            RequestError::Reset => "reset",
            RequestError::Other(_) => "error",
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Refused => f.write_str("refused: connection refused"),
            RequestError::Timeout => f.write_str("timeout: no reply in time"),
            RequestError::Unreachable(m) => write!(f, "unreachable: {m}"),
            RequestError::Reset => f.write_str("reset: connection reset"),
            RequestError::Other(m) => write!(f, "error: {m}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> RequestError {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => RequestError::Refused,
            Some(libc::ETIMEDOUT) | Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => {
                RequestError::Timeout
            }
            Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                RequestError::Unreachable(e.to_string())
            }
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => RequestError::Reset,
            _ => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => RequestError::Timeout,
                io::ErrorKind::ConnectionRefused => RequestError::Refused,
                io::ErrorKind::ConnectionReset => RequestError::Reset,
                _ => RequestError::Other(e.to_string()),
            },
        }
    }
}

/// One request: connect (TCP) or send (UDP), read one reply; `timeout` covers everything.
/// Runs in the caller's network namespace (see `Netns::request` for another one).
pub fn request(addr: SocketAddr, udp: bool, timeout: Duration) -> Result<Reply, RequestError> {
    let deadline = Instant::now() + timeout;
    let mut conn = EchoConn::connect(addr, udp, timeout)?;
    conn.ask(deadline.saturating_duration_since(Instant::now()))
}

/// One request over an unconnected UDP socket (sendto/recvfrom): the reply and the address it
/// came from, as the socket reports it (what a DNS stub resolver checks against its server).
pub fn request_unconnected(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Reply, SocketAddr), RequestError> {
    if timeout.is_zero() {
        return Err(RequestError::Timeout);
    }
    let any: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(&request_line(0, 0), addr)?;
    let mut buf = vec![0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    buf.truncate(n);
    Ok((String::from_utf8_lossy(&buf).parse()?, from))
}

/// A TCP connection or connected UDP socket to an echo server, for several requests over the
/// same 5-tuple.
#[derive(Debug)]
pub struct EchoConn {
    conn: Conn,
    local: SocketAddr,
    remote: SocketAddr,
}

#[derive(Debug)]
enum Conn {
    Tcp(BufReader<TcpStream>),
    Udp(UdpSocket),
}

impl EchoConn {
    /// Connects (TCP, within `timeout`) or creates a connected UDP socket, in the caller's
    /// network namespace.
    pub fn connect(
        addr: SocketAddr,
        udp: bool,
        timeout: Duration,
    ) -> Result<EchoConn, RequestError> {
        if timeout.is_zero() {
            return Err(RequestError::Timeout);
        }
        let (conn, local) = if udp {
            let any: SocketAddr = if addr.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(any)?;
            sock.connect(addr)?;
            let local = sock.local_addr()?;
            (Conn::Udp(sock), local)
        } else {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_nodelay(true)?;
            let local = stream.local_addr()?;
            (Conn::Tcp(BufReader::new(stream)), local)
        };
        Ok(EchoConn {
            conn,
            local,
            remote: addr,
        })
    }

    /// Our address (as bound locally, before any NAT).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address connected to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The peer as the socket reports it (getpeername): the Service it connected to, also when
    /// a socket hook sent it to a backend.
    pub fn reported_peer(&self) -> io::Result<SocketAddr> {
        match &self.conn {
            Conn::Tcp(reader) => reader.get_ref().peer_addr(),
            Conn::Udp(sock) => sock.peer_addr(),
        }
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub fn ask(&mut self, timeout: Duration) -> Result<Reply, RequestError> {
        self.ask_for(0, timeout)
    }

    /// Sends one request for a reply of `bytes` (0: unpadded) and waits up to `timeout` for it.
    pub fn ask_for(&mut self, bytes: usize, timeout: Duration) -> Result<Reply, RequestError> {
        self.exchange(0, bytes, timeout)
    }

    /// Sends one request of `request` bytes (0: unpadded) for a reply of `reply` bytes and waits
    /// up to `timeout` for it.
    pub fn exchange(
        &mut self,
        request: usize,
        reply: usize,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        if timeout.is_zero() {
            return Err(RequestError::Timeout);
        }
        let request = request_line(reply, request);
        let line = match &mut self.conn {
            Conn::Tcp(reader) => {
                let deadline = Instant::now() + timeout;
                // A large request into a black hole must time out, not block.
                reader.get_ref().set_write_timeout(Some(timeout))?;
                reader.get_mut().write_all(&request)?;
                read_line(reader, deadline)?
            }
            Conn::Udp(sock) => {
                sock.set_read_timeout(Some(timeout))?;
                sock.send(&request)?;
                let mut buf = vec![0u8; 65536];
                let n = sock.recv(&mut buf)?;
                buf.truncate(n);
                buf
            }
        };
        String::from_utf8_lossy(&line).parse()
    }
}

/// Reads one line by `deadline` (the timeout covers the whole line, however large).
fn read_line(
    reader: &mut BufReader<TcpStream>,
    deadline: Instant,
) -> Result<Vec<u8>, RequestError> {
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout);
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(RequestError::Other(format!(
                "connection closed after {} bytes of the reply",
                buf.len()
            )));
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        reader.consume(take);
        if done {
            return Ok(buf);
        }
    }
}

/// Serves TCP forever: a thread per connection, one reply per line received.
pub fn serve_tcp(name: &str, listener: TcpListener) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let name = name.to_string();
                std::thread::spawn(move || {
                    let _ = handle_tcp(stream, &name, peer);
                });
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EMFILE | libc::ENFILE)
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

fn handle_tcp(stream: TcpStream, name: &str, peer: SocketAddr) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        writer.write_all(&reply_to(&buf, name, peer))?;
    }
}

/// Serves UDP forever: one reply per datagram, sent from the datagram's destination address.
pub fn serve_udp(name: &str, sock: UdpSocket) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let v6 = sock.local_addr()?.is_ipv6();
    let one: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a c_int option value.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, src, dst) = match recv_with_dst(fd, &mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let reply = reply_to(&buf[..n], name, src);
        let sent = send_from(fd, &reply, src, dst);
        if let Err(e) = sent {
            if dst.is_some() && e.raw_os_error() == Some(libc::EINVAL) {
                // e.g. a broadcast destination: can't be a source, let routing pick one.
                let _ = send_from(fd, &reply, src, None);
            } else {
                eprintln!("lb-echo: reply to {src}: {e}");
            }
        }
    }
}

/// Control-message buffer, aligned for cmsghdr.
#[repr(C, align(8))]
struct CmsgBuf([u8; 128]);

/// One datagram into `buf`: its length, source, and the address it was sent to.
fn recv_with_dst(
    fd: libc::c_int,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: msghdr points at buffers that outlive the call; CMSG_* walk our own buffer.
    unsafe {
        let mut src: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cbuf = CmsgBuf([0; 128]);
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut src as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cbuf.0.len() as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut dst = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let pi = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
            } else if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO
            {
                let pi = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                dst = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let src = sockaddr_to_std(&src)
            .ok_or_else(|| io::Error::other("datagram from an unknown address family"))?;
        Ok((n as usize, src, dst))
    }
}

fn send_from(fd: libc::c_int, data: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<()> {
    // SAFETY: as in recv_with_dst; the cmsg written fits CmsgBuf (checked by CMSG_SPACE).
    unsafe {
        let (mut sa, salen) = std_to_sockaddr(to);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut cbuf = CmsgBuf([0; 128]);
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
        msg.msg_namelen = salen;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let from = match (from, to) {
            // v4-mapped source on a v6 socket talking to a v4 peer: use the plain v4 form.
            (Some(IpAddr::V6(a)), SocketAddr::V6(t)) if t.ip().to_ipv4_mapped().is_some() => {
                a.to_ipv4_mapped().map(IpAddr::V4)
            }
            (f, _) => f,
        };
        if let Some(from) = from {
            let (level, ty, len) = match from {
                IpAddr::V4(_) => (
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    std::mem::size_of::<libc::in_pktinfo>(),
                ),
                IpAddr::V6(_) => (
                    libc::IPPROTO_IPV6,
                    libc::IPV6_PKTINFO,
                    std::mem::size_of::<libc::in6_pktinfo>(),
                ),
            };
            let space = libc::CMSG_SPACE(len as u32) as usize;
            assert!(space <= cbuf.0.len());
            msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = level;
            (*c).cmsg_type = ty;
            (*c).cmsg_len = libc::CMSG_LEN(len as u32) as _;
            let data = libc::CMSG_DATA(c);
            match from {
                IpAddr::V4(a) => std::ptr::write_unaligned(
                    data as *mut libc::in_pktinfo,
                    libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(a).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    },
                ),
                IpAddr::V6(a) => std::ptr::write_unaligned(
                    data as *mut libc::in6_pktinfo,
                    libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    },
                ),
            }
        }
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which sockaddr variant the storage holds.
    unsafe {
        match ss.ss_family as libc::c_int {
            libc::AF_INET => {
                let sin = &*(ss as *const _ as *const libc::sockaddr_in);
                Some(SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*(ss as *const _ as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

fn std_to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is large enough and suitably aligned for both variants.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }
}
