//! lbctl: what the kernel maps hold, as tables for people and as JSON for programs.
//!
//! Every command reads the maps pinned under the pin path (`Maps::open_pinned`), so it works
//! whether the agent runs or not, and never writes. Each command has a module that turns the maps
//! into serializable rows (the JSON contract, documented in the README) and renders them as a
//! table; `open` turns the ways opening can fail into messages a person can act on.
pub mod affinity;
pub mod backends;
pub mod conntrack;
pub mod interfaces;
pub mod open;
pub mod services;
pub mod stats;
pub mod table;
pub mod units;

use std::{
    collections::HashMap,
    io::{self, Write},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::Result;
use lb_common::ServiceName;
use serde::Serialize;

use crate::{
    dataplane::{maps::entries, reconcile::set_key_of, Maps},
    model::SetKey,
};

pub use open::{open, OpenError};

/// How results are printed (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with human units.
    Table,
    /// Pretty JSON (with `stats --watch`: one compact document per line and refresh).
    Json,
}

/// What to show.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Services,
    Backends,
    Conntrack {
        /// `namespace/name`, or `namespace/name:port-name`.
        service: Option<String>,
    },
    Affinity,
    Interfaces,
    Stats {
        /// Refresh every interval, with rates, until interrupted (or `count` refreshes).
        watch: Option<Duration>,
        count: Option<u64>,
    },
}

/// An lbctl invocation, parsed.
#[derive(Clone, Debug)]
pub struct Request {
    pub pin_path: PathBuf,
    pub format: Format,
    pub command: Command,
}

/// Why lbctl failed: the message is for a person, `exit_code` for the shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// Run one request, writing its output to `out`.
pub fn run(req: &Request, out: &mut dyn Write) -> Result<(), Error> {
    let maps = open(&req.pin_path)?;
    let result = match &req.command {
        Command::Services => {
            let rows = services::rows(&maps)?;
            emit(out, req.format, rows.as_slice(), services::table)
        }
        Command::Backends => {
            let rows = backends::rows(&maps)?;
            emit(out, req.format, rows.as_slice(), backends::table)
        }
        Command::Conntrack { service } => {
            let rows = conntrack::rows(&maps, monotonic_ns(), service.as_deref())?;
            emit(out, req.format, rows.as_slice(), conntrack::table)
        }
        Command::Affinity => {
            let rows = affinity::rows(&maps, monotonic_ns())?;
            emit(out, req.format, rows.as_slice(), affinity::table)
        }
        Command::Interfaces => {
            let rows = interfaces::rows(&maps)?;
            emit(out, req.format, rows.as_slice(), interfaces::table)
        }
        Command::Stats { watch: None, .. } => {
            let snap = stats::Snapshot::read(&maps, None)?;
            emit(out, req.format, &snap, stats::table)
        }
        Command::Stats {
            watch: Some(every),
            count,
        } => stats::watch(&maps, req.format, *every, *count, out),
    };
    match result {
        // `lbctl ... | head` is not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => Ok(other?),
    }
}

/// Print rows as JSON or as the table `render` makes of them.
fn emit<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    format: Format,
    rows: &T,
    render: impl Fn(&T) -> String,
) -> Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Format::Table => writeln!(out, "{}", render(rows))?,
    }
    out.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == io::ErrorKind::BrokenPipe)
    })
}

pub use crate::dataplane::conntrack::monotonic_ns;

/// Whole seconds from `then` to `now` (0 when `then` is in the future).
pub(crate) fn secs_since(now_ns: u64, then_ns: u64) -> u64 {
    now_ns.saturating_sub(then_ns) / 1_000_000_000
}

/// The service port each backend-set id belongs to (`LB_SVC_NAMES`).
pub(crate) struct Names(HashMap<u32, SetKey>);

impl Names {
    pub(crate) fn read(maps: &Maps) -> Result<Self> {
        let names: Vec<(u32, ServiceName)> = entries(&maps.service_names)?;
        Ok(Names(
            names
                .into_iter()
                .filter_map(|(id, n)| Some((id, set_key_of(&n)?)))
                .collect(),
        ))
    }

    pub(crate) fn get(&self, id: u32) -> Option<&SetKey> {
        self.0.get(&id)
    }
}

/// `ns/name:port-name` (`ns/name` for an unnamed port), as tables show a service port.
pub(crate) fn port_label(service: &str, port_name: &str) -> String {
    if port_name.is_empty() {
        service.to_string()
    } else {
        format!("{service}:{port_name}")
    }
}

/// An address and port, in JSON `{"ip": ..., "port": ...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    /// From a map's network-order address and port.
    pub(crate) fn from_wire(addr: u32, port: u16) -> Self {
        Endpoint {
            ip: ip_of(addr),
            port: u16::from_be(port),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

pub(crate) fn ip_of(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

pub(crate) fn protocol_name(proto: u8) -> &'static str {
    use crate::dataplane::reconcile::Code;
    crate::model::Protocol::from_code(proto).map_or("?", crate::model::Protocol::as_str)
}
