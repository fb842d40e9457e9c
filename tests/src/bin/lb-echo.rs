//! `lb-echo`: tiny TCP/UDP echo server and client for the namespace lab.
//!
//! ```text
//! lb-echo serve --name NAME --port PORT [--udp] [--bind IP]
//!     Listens on IP:PORT (default 0.0.0.0), prints "READY tcp|udp ADDR" to stdout once it does,
//!     then answers every line (TCP) or datagram (UDP) with "NAME PEER_IP:PEER_PORT\n".
//! lb-echo request --addr IP:PORT [--udp] [--timeout-ms N]
//!     Sends one request (default timeout 2000 ms, covering connect and reply) and prints the
//!     reply line. On failure prints "lb-echo: KIND: ..." to stderr and exits with
//!     3 refused, 4 timeout, 5 unreachable, 6 reset, 1 other error (2: usage).
//! ```

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use lb_tests::lab::echo;

const USAGE: &str = "usage:
  lb-echo serve --name NAME --port PORT [--udp] [--bind IP]
  lb-echo request --addr IP:PORT [--udp] [--timeout-ms N]
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
    let o = match Opts::parse(args, &["--addr", "--timeout-ms"], &["--udp"]) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let Some(Ok(addr)) = o.get("--addr").map(str::parse::<SocketAddr>) else {
        return usage("request needs --addr IP:PORT");
    };
    let timeout_ms = match o.get("--timeout-ms").map(str::parse::<u64>) {
        None => 2000,
        Some(Ok(ms)) if ms > 0 => ms,
        Some(_) => return usage("--timeout-ms needs a positive number"),
    };
    let udp = o.has("--udp");
    match echo::request(addr, udp, Duration::from_millis(timeout_ms)) {
        Ok(reply) => {
            println!("{reply}");
            echo::EXIT_OK
        }
        Err(e) => {
            eprintln!(
                "lb-echo: {e} ({} {addr}, timeout {timeout_ms} ms)",
                if udp { "udp" } else { "tcp" }
            );
            e.exit_code()
        }
    }
}
