//! `lb-echo`: tiny TCP/UDP echo server and client for the namespace lab.
//!
//! ```text
//! lb-echo serve --name NAME --port PORT [--udp] [--bind IP]
//!     Listens on IP:PORT (default 0.0.0.0), prints "READY tcp|udp ADDR" to stdout once it does,
//!     then answers every line (TCP) or datagram (UDP) with "NAME PEER_IP:PEER_PORT\n".
//! lb-echo request --addr IP:PORT [--udp [--unconnected]] [--timeout-ms N] [--show-peer]
//!                [--count N [--interval-ms M] [--hold]]
//!     Sends a request (default timeout 2000 ms, covering connect and reply) and prints the
//!     reply line; with --show-peer followed by " from ADDR", the peer as the socket reports it
//!     (getpeername, or recvfrom's source with --unconnected: sendto/recvfrom on an unconnected
//!     UDP socket). --count: N requests M ms apart (default 0), each on a new connection, or all
//!     on one with --hold; each failure prints "ERROR KIND" on stdout and the run goes on. On
//!     failure prints "lb-echo: KIND: ..." to stderr and exits with the first failure's code:
//!     3 refused, 4 timeout, 5 unreachable, 6 reset, 1 other error (2: usage).
//! ```

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use lb_tests::lab::echo;

const USAGE: &str = "usage:
  lb-echo serve --name NAME --port PORT [--udp] [--bind IP]
  lb-echo request --addr IP:PORT [--udp [--unconnected]] [--timeout-ms N] [--show-peer]
                 [--count N [--interval-ms M] [--hold]]
request exit codes: 0 ok, 1 error, 2 usage, 3 refused, 4 timeout, 5 unreachable, 6 reset";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("request") => request(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            echo::EXIT_OK
        }
        _ => usage("missing or unknown subcommand"),
    };
    ExitCode::from(code as u8)
}

fn usage(msg: &str) -> i32 {
    eprintln!("lb-echo: {msg}\n{USAGE}");
    echo::EXIT_USAGE
}

/// Parsed `--flag value` / `--switch` options.
struct Opts {
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Opts, String> {
        let mut o = Opts {
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if with_value.contains(&a.as_str()) {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                o.values.push((a.clone(), v.clone()));
            } else if switches.contains(&a.as_str()) {
                o.switches.push(a.clone());
            } else {
                return Err(format!("unexpected argument {a:?}"));
            }
        }
        Ok(o)
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, switch: &str) -> bool {
        self.switches.iter().any(|s| s == switch)
    }
}

fn serve(args: &[String]) -> i32 {
    let o = match Opts::parse(args, &["--name", "--port", "--bind"], &["--udp"]) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let Some(name) = o.get("--name") else {
        return usage("serve needs --name");
    };
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return usage("--name must be non-empty without whitespace");
    }
    let Some(Ok(port)) = o.get("--port").map(str::parse::<u16>) else {
        return usage("serve needs --port PORT (0-65535)");
    };
    let ip: IpAddr = match o.get("--bind").unwrap_or("0.0.0.0").parse() {
        Ok(ip) => ip,
        Err(_) => return usage("--bind needs an IP address"),
    };
    let addr = SocketAddr::new(ip, port);
    let result = if o.has("--udp") {
        UdpSocket::bind(addr).and_then(|sock| {
            println!("{} udp {}", echo::READY, sock.local_addr()?);
            echo::serve_udp(name, sock)
        })
    } else {
        TcpListener::bind(addr).and_then(|l| {
            println!("{} tcp {}", echo::READY, l.local_addr()?);
            echo::serve_tcp(name, l)
        })
    };
    match result {
        Ok(()) => echo::EXIT_OK,
        Err(e) => {
            eprintln!("lb-echo: serve {addr}: {e}");
            echo::EXIT_ERROR
        }
    }
}

fn request(args: &[String]) -> i32 {
    let o = match Opts::parse(
        args,
        &["--addr", "--timeout-ms", "--count", "--interval-ms"],
        &["--udp", "--unconnected", "--show-peer", "--hold"],
    ) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let Some(Ok(addr)) = o.get("--addr").map(str::parse::<SocketAddr>) else {
        return usage("request needs --addr IP:PORT");
    };
    let number = |flag: &str, default: u64| match o.get(flag).map(str::parse::<u64>) {
        None => Ok(default),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(usage(&format!("{flag} needs a number"))),
    };
    let (timeout_ms, count, interval_ms) = match (
        number("--timeout-ms", 2000),
        number("--count", 1),
        number("--interval-ms", 0),
    ) {
        (Ok(t), Ok(c), Ok(i)) if t > 0 && c > 0 => (t, c, i),
        (Err(code), _, _) | (_, Err(code), _) | (_, _, Err(code)) => return code,
        _ => return usage("--timeout-ms and --count need positive numbers"),
    };
    let udp = o.has("--udp");
    let unconnected = o.has("--unconnected");
    if unconnected && (!udp || o.has("--hold")) {
        return usage("--unconnected needs --udp and excludes --hold");
    }
    let timeout = Duration::from_millis(timeout_ms);
    let mut held: Option<echo::EchoConn> = None;
    let mut first_failure = echo::EXIT_OK;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
        let result = if unconnected {
            echo::request_unconnected(addr, timeout)
        } else {
            connected_request(addr, udp, timeout, o.has("--hold"), &mut held)
        };
        match result {
            Ok((reply, from)) if o.has("--show-peer") => println!("{reply} from {from}"),
            Ok((reply, _)) => println!("{reply}"),
            Err(e) => {
                println!("ERROR {}", e.kind());
                eprintln!(
                    "lb-echo: {e} ({} {addr}, timeout {timeout_ms} ms)",
                    if udp { "udp" } else { "tcp" }
                );
                if first_failure == echo::EXIT_OK {
                    first_failure = e.exit_code();
                }
                held = None;
            }
        }
    }
    first_failure
}

/// One request over a connection: a new one, or with `hold` the one kept in `held`. Returns
/// the reply and the peer the socket reports (getpeername).
fn connected_request(
    addr: SocketAddr,
    udp: bool,
    timeout: Duration,
    hold: bool,
    held: &mut Option<echo::EchoConn>,
) -> Result<(echo::Reply, SocketAddr), echo::RequestError> {
    let mut conn = match held.take() {
        Some(c) => c,
        None => echo::EchoConn::connect(addr, udp, timeout)?,
    };
    let reply = conn.ask(timeout)?;
    let peer = conn.reported_peer()?;
    if hold {
        *held = Some(conn);
    }
    Ok((reply, peer))
}
