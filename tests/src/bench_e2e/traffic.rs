//! The benchmark's traffic: a small request/response server and a closed-loop load generator that
//! opens one TCP connection per request (connect, request, response, close) and times each.
//!
//! Who closes first is a choice ([`Closer`]): the side that does keeps the connection's TIME_WAIT.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the client sends: one line.
pub const REQUEST: &[u8] = b"GET /\n";
/// What the server answers (the size of a small HTTP response's headers).
pub const RESPONSE: &[u8] =
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nServer: lb-bench-e2e\r\nConnection: close\r\n\r\n";
/// The server's accept queue. std listens with 128, which bursts of new connections overflow
/// (a dropped SYN costs a 1 s retransmit and shows up as a p99 outlier, not as the datapath's).
const BACKLOG: i32 = 4096;
/// Bounds each step of a connection, so that a lost packet costs one error, not the run.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// What `lb-bench-e2e serve` prints once it listens.
pub const READY: &str = "READY";

/// A listener on `port` (all addresses) with a deep accept queue.
pub fn listen(port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    // SAFETY: listen on a socket we own; calling it again only changes the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Which side of a connection closes it first, once the response is through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Closer {
    /// The server, as an HTTP/1.0 server does: TIME_WAIT stays with the pods. Under kube-proxy
    /// a NodePort's masquerading (`--random-fully`) then hands the pods new connections on
    /// 4-tuples they still hold in TIME_WAIT; some SYNs are dropped (PAWS) and retransmitted.
    Server,
    /// The client: TIME_WAIT stays with the client, which reuses its ports after 1 s
    /// (`tcp_tw_reuse`); the pods never see a 4-tuple twice. The benchmark's default: it
    /// measures the datapaths, not that interaction.
    Client,
}

/// Serves `listener` with `threads` threads that each accept, answer and close, one connection
/// at a time: no thread per connection, whose creation would cost more than the request itself.
pub fn serve(listener: &TcpListener, threads: usize, closer: Closer) -> io::Result<()> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || accept_loop(&listener, closer)))
        })
        .collect::<io::Result<_>>()?;
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("server thread panicked"))??;
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener, closer: Closer) -> io::Result<()> {
    loop {
        match listener.accept() {
            // A client that went away mid-request is its own problem, not the server's.
            Ok((stream, _)) => drop(answer(stream, closer)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Err(e) => return Err(e),
        }
    }
}

fn answer(mut stream: TcpStream, closer: Closer) -> io::Result<()> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') {
        let n = stream.read(&mut buf[got..])?;
        if n == 0 || got + n == buf.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        got += n;
    }
    stream.write_all(RESPONSE)?;
    if closer == Closer::Client {
        expect_eof(&mut stream)?;
    }
    Ok(())
}

/// Waits for the peer's FIN (nothing more may come).
fn expect_eof(stream: &mut TcpStream) -> io::Result<()> {
    match stream.read(&mut [0u8; 1])? {
        0 => Ok(()),
        _ => Err(io::ErrorKind::InvalidData.into()),
    }
}

/// How one load run went, as `lb-bench-e2e load` prints it (one JSON line).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Connections that completed inside the measured window.
    pub completed: u64,
    /// Connections that failed (refused, reset, timed out, wrong answer) in the window.
    pub errors: u64,
    /// Length of the measured window.
    pub secs: f64,
    /// Completed connections per second.
    pub conns_per_sec: f64,
    /// Latency of one connection (connect until the whole response), microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What the client does: how many closed loops, for how long, and who closes.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub conns: usize,
    /// Unmeasured: conntrack, caches and the servers' accept queues settle.
    pub warmup: Duration,
    pub duration: Duration,
    pub closer: Closer,
}

/// Runs `opts.conns` connection loops against `addrs` (one address: a Service; several: its
/// endpoints, each connection to one of them at random, as the Service spreads them), measuring
/// after the warm-up.
pub fn load(addrs: &[SocketAddr], opts: &LoadOptions) -> LoadReport {
    let from = Instant::now() + opts.warmup;
    let until = from + opts.duration;
    let closer = opts.closer;
    let per_thread: Vec<(Vec<u32>, u64)> = std::thread::scope(|s| {
        let loops: Vec<_> = (0..opts.conns)
            .map(|i| s.spawn(move || connection_loop(addrs, i as u64, closer, from, until)))
            .collect();
        loops
            .into_iter()
            .map(|h| h.join().expect("load thread panicked"))
            .collect()
    });
    let errors = per_thread.iter().map(|(_, e)| e).sum();
    let mut latencies: Vec<u32> = per_thread.into_iter().flat_map(|(l, _)| l).collect();
    latencies.sort_unstable();
    let secs = opts.duration.as_secs_f64();
    LoadReport {
        completed: latencies.len() as u64,
        errors,
        secs,
        conns_per_sec: latencies.len() as f64 / secs,
        p50_us: percentile(&latencies, 50.0).into(),
        p99_us: percentile(&latencies, 99.0).into(),
    }
}

/// One closed loop: latencies (µs) of the connections that started at or after `from` and ended
/// by `until`, and how many of those failed.
///
/// Each connection goes to an address of `addrs` drawn uniformly: to a Service's endpoints this
/// is the spread the Service itself gives (lb picks a backend at random), so the two differ only
/// by the translation. A loop pinned to one endpoint would be kinder than any Service: no
/// moment where two loops meet on one pod.
fn connection_loop(
    addrs: &[SocketAddr],
    seed: u64,
    closer: Closer,
    from: Instant,
    until: Instant,
) -> (Vec<u32>, u64) {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut draw = fastrand::Rng::with_seed(seed);
    loop {
        let start = Instant::now();
        if start >= until {
            return (latencies, errors);
        }
        let addr = addrs[draw.usize(..addrs.len())];
        let result = connection(addr, closer);
        let end = Instant::now();
        if start < from || end > until {
            continue;
        }
        match result {
            Ok(()) => latencies.push((end - start).as_micros().min(u32::MAX.into()) as u32),
            Err(_) => errors += 1,
        }
    }
}

/// One connection to `addr`: connect, request, the whole response, close.
pub fn connection(addr: SocketAddr, closer: Closer) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let mut buf = [0u8; RESPONSE.len()];
    stream.read_exact(&mut buf)?;
    if buf != RESPONSE {
        return Err(io::ErrorKind::InvalidData.into());
    }
    if closer == Closer::Server {
        expect_eof(&mut stream)?;
    }
    Ok(())
}

/// The value below which `pct` percent of the sorted `values` lie (nearest rank); 0 when empty.
pub fn percentile(sorted: &[u32], pct: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    /// The server and the load generator over loopback: every connection completes, whoever
    /// closes first.
    #[test]
    fn load_against_the_server_completes_connections() {
        for closer in [Closer::Server, Closer::Client] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || accept_loop(&listener, closer));
            let opts = LoadOptions {
                conns: 2,
                warmup: Duration::from_millis(50),
                duration: Duration::from_millis(300),
                closer,
            };
            let report = load(&[addr], &opts);
            assert!(report.completed > 10, "{closer:?}: {report:?}");
            assert_eq!(report.errors, 0, "{closer:?}: {report:?}");
            assert!(
                report.p50_us > 0 && report.p50_us <= report.p99_us,
                "{report:?}"
            );
        }
    }
}
