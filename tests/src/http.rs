//! Plain HTTP/1.0 GETs from inside a lab namespace, for the agent's health, metrics and
//! healthCheckNodePort servers (curl need not be installed).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::lab::{poll_until, Netns};

#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 GET from inside `ns` (curl need not be installed).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<HttpReply> {
    let addr: SocketAddr = addr.parse().unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    ns.in_netns(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(request.as_bytes())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        parse(&raw).ok_or_else(|| std::io::Error::other(format!("bad reply: {raw:?}")))
    })
    .map_err(std::io::Error::other)?
}

fn parse(raw: &str) -> Option<HttpReply> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpReply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Polls a GET until `ok` accepts the reply; panics with the last reply (or error) on timeout.
pub fn until_reply(
    ns: &Netns,
    addr: &str,
    path: &str,
    within: Duration,
    ok: impl Fn(&HttpReply) -> bool,
) -> HttpReply {
    let mut last = None;
    let got = poll_until(within, || match http_get(ns, addr, path) {
        Ok(r) if ok(&r) => Some(r),
        other => {
            last = Some(other);
            None
        }
    });
    got.unwrap_or_else(|| panic!("GET {addr}{path} from {}: last {last:?}", ns.name()))
}
