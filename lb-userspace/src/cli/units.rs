//! Human units for tables: `1.2 KiB`, `3.4 Mpkt`, `5m3s`. JSON keeps exact numbers.

/// Bytes in binary units: `512 B`, `1.2 KiB`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    scaled(
        n as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
    )
}

/// Packets in decimal units: `512 pkt`, `1.2 kpkt`, `3.4 Mpkt`.
pub fn packets(n: u64) -> String {
    scaled(
        n as f64,
        1000.0,
        &["pkt", "kpkt", "Mpkt", "Gpkt", "Tpkt", "Ppkt", "Epkt"],
    )
}

pub fn bytes_rate(per_sec: f64) -> String {
    format!(
        "{}/s",
        scaled_rate(per_sec, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"])
    )
}

pub fn packets_rate(per_sec: f64) -> String {
    format!(
        "{}/s",
        scaled_rate(per_sec, 1000.0, &["pkt", "kpkt", "Mpkt", "Gpkt", "Tpkt"])
    )
}

/// Plain counts: `512`, `1.2k`, `3.4M`.
pub fn count(n: u64) -> String {
    scaled(n as f64, 1000.0, &["", "k", "M", "G", "T", "P", "E"]).replace(' ', "")
}

/// A duration in its two most significant units: `42s`, `5m3s`, `2h5m`, `3d4h`; `3h`, not
/// `3h0m`.
pub fn duration(secs: u64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let Some(first) = units.iter().position(|(_, size)| secs >= *size) else {
        return "0s".into();
    };
    let mut out = String::new();
    let mut rest = secs;
    for (name, size) in &units[first..(first + 2).min(units.len())] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            out.push_str(&format!("{n}{name}"));
        }
    }
    out
}

/// Integers below one step as they are; above, one decimal below 100 of the unit.
fn scaled(n: f64, step: f64, units: &[&str]) -> String {
    if n < step {
        return format!("{n} {}", units[0]);
    }
    let mut value = n;
    let mut unit = 0;
    while value >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB": move up a unit instead.
    if format!("{value:.1}").parse::<f64>().unwrap_or(value) >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if value < 100.0 {
        format!("{value:.1} {}", units[unit])
    } else {
        format!("{value:.0} {}", units[unit])
    }
}

fn scaled_rate(per_sec: f64, step: f64, units: &[&str]) -> String {
    let per_sec = if per_sec.is_finite() {
        per_sec.max(0.0)
    } else {
        0.0
    };
    if per_sec < step {
        return if per_sec < 10.0 && per_sec.fract() != 0.0 {
            format!("{per_sec:.1} {}", units[0])
        } else {
            format!("{per_sec:.0} {}", units[0])
        };
    }
    scaled(per_sec, step, units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1229), "1.2 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(150 * 1024 * 1024), "150 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(packets(999), "999 pkt");
        assert_eq!(packets(1_200), "1.2 kpkt");
        assert_eq!(packets(3_400_000), "3.4 Mpkt");
        assert_eq!(packets(u64::MAX), "18.4 Epkt");
        assert_eq!(count(42), "42");
        assert_eq!(count(1_500), "1.5k");
        assert_eq!(packets_rate(0.0), "0 pkt/s");
        assert_eq!(packets_rate(2.5), "2.5 pkt/s");
        assert_eq!(packets_rate(250.0), "250 pkt/s");
        assert_eq!(packets_rate(12_345.0), "12.3 kpkt/s");
        assert_eq!(bytes_rate(2048.0), "2.0 KiB/s");
        assert_eq!(bytes_rate(-3.0), "0 B/s");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(303), "5m3s");
        assert_eq!(duration(10_800), "3h");
        assert_eq!(duration(7_500), "2h5m");
        assert_eq!(duration(7_505), "2h5m");
        assert_eq!(duration(86_400 * 3 + 3_600 * 4 + 5), "3d4h");
        assert_eq!(duration(86_400 + 59), "1d");
    }
}
