//! lbctl: show what lb's kernel maps hold (services, backends, conntrack, affinity, stats), as
//! tables or JSON. Reads the maps pinned by lb-agent, whether it runs or not; never writes.
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use lb::cli::{self, Format, Request};

#[derive(Parser)]
#[command(
    version,
    about = "Inspect lb's kernel maps: services, backends, conntrack, affinity, stats"
)]
struct Cli {
    /// Where lb-agent pinned its maps (its --pin-path).
    #[arg(long, global = true, value_name = "DIR", default_value = lb::dataplane::DEFAULT_PIN_PATH)]
    pin_path: PathBuf,
    /// Output format: aligned table with human units, or JSON (fields in the README).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One row per frontend, with its kind, flags and backends.
    Services,
    /// Every backend and the service ports that use it.
    Backends,
    /// Tracked connections: client, frontend, backend, state, age.
    Conntrack {
        /// Only this service's flows: NAMESPACE/NAME or NAMESPACE/NAME:PORT-NAME.
        #[arg(long, value_name = "NS/NAME")]
        service: Option<String>,
    },
    /// ClientIP session-affinity entries, with the seconds they have left.
    Affinity,
    /// The interfaces lb attached to, and the XDP mode each runs in and why.
    Interfaces,
    /// Packets and bytes per frontend, drop and reject counters.
    Stats {
        /// Refresh every SECONDS (default 1) with rates, until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1",
              value_parser = seconds)]
        watch: Option<Duration>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn main() {
    let args = Cli::parse();
    let command = match args.command {
        Command::Services => cli::Command::Services,
        Command::Backends => cli::Command::Backends,
        Command::Conntrack { service } => cli::Command::Conntrack { service },
        Command::Affinity => cli::Command::Affinity,
        Command::Interfaces => cli::Command::Interfaces,
        Command::Stats { watch, count } => cli::Command::Stats { watch, count },
    };
    let req = Request {
        pin_path: args.pin_path,
        format: args.output,
        command,
    };
    if let Err(e) = cli::run(&req, &mut std::io::stdout().lock()) {
        eprintln!("lbctl: {e}");
        std::process::exit(e.exit_code());
    }
}
