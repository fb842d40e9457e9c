use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use super::echo::{self, EchoConn, Reply, RequestError};
use super::registry::{self, REGISTRY_DIR};
use super::*;

const T: Duration = Duration::from_secs(2);

#[test]
fn prefixes_are_short_hex_and_varied() {
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let p = registry::make_prefix(i);
        assert!(registry::is_prefix(&p), "{p}");
        // The longest name we hand out must still be a valid interface-sized token.
        assert!(format!("{p}-x").len() <= 15);
        seen.insert(p);
    }
    assert!(seen.len() > 150, "only {} distinct prefixes", seen.len());
    assert!(!registry::is_prefix("lb12g4"));
    assert!(!registry::is_prefix("lb123"));
    assert!(!registry::is_prefix("xx1234"));
}

#[test]
fn names_are_validated() {
    for ok in ["client", "node-1", "a_b", "X9"] {
        validate_name(ok).unwrap();
    }
    for bad in ["", "a b", "a/b", "../x", &"n".repeat(41), "ä"] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for ok in ["eth0", "veth-node1-pod2", "br0"] {
        validate_ifname(ok).unwrap();
    }
    for bad in ["", "0123456789abcdef", "a b", "a/b", "a:b"] {
        assert!(validate_ifname(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn macs_parse() {
    assert_eq!(
        parse_mac("02:00:5e:10:00:ff"),
        Some([2, 0, 0x5e, 0x10, 0, 0xff])
    );
    assert_eq!(parse_mac("02:00:5e:10:00"), None);
    assert_eq!(parse_mac("02:00:5e:10:00:ff:01"), None);
    assert_eq!(parse_mac("zz:00:5e:10:00:ff"), None);
}

#[test]
fn labels_are_sanitized() {
    assert_eq!(sanitize_label("echo pod/a:80"), "echo_pod_a_80");
    assert_eq!(sanitize_label(""), "proc");
}

#[test]
fn start_time_parses_despite_odd_comm() {
    let rest: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
    let stat = format!("4242 (we) ird) (name) {}", rest.join(" "));
    assert_eq!(registry::parse_start_time(&stat), Some(22));
    assert_eq!(registry::parse_start_time("garbage"), None);
    let me = std::process::id() as i32;
    assert!(registry::process_start_time(me).is_some());
}

#[test]
fn records_keep_only_own_objects() {
    let tmp = std::env::temp_dir();
    let text = format!(
        "owner 123 456\ntest my test\nnetns lb00aa-client\nnetns lb00ab-other\nnetns lb00aa-\n\
         netns lb00aa-a/../x\npin /sys/fs/bpf/lb00aa-node1\npin /sys/fs/bpf/other\n\
         pin /sys/fs/bpf/lb00aa-x/../../y\npin /tmp/lb00aa-x\ndir {}\ndir /tmp\nbogus\n",
        tmp.join("lb-lab-lb00aa").display()
    );
    let p = registry::parse("lb00aa", &text);
    assert_eq!(p.owner, Some((123, 456)));
    assert_eq!(p.test, "my test");
    assert_eq!(p.netns, vec!["lb00aa-client".to_string()]);
    assert_eq!(
        p.pins,
        vec![Path::new("/sys/fs/bpf/lb00aa-node1").to_path_buf()]
    );
    assert_eq!(p.dirs, vec![tmp.join("lb-lab-lb00aa")]);
    assert_eq!(registry::parse("lb00aa", "").owner, None);
    // Cgroups: only the lab's own, directly under the cgroup2 root.
    if let Ok(root) = lb::dataplane::socket_lb::cgroup2_root() {
        let r = root.display();
        let text = format!(
            "cgroup {r}/lb00aa-lab\ncgroup {r}/lb00ab-lab\ncgroup {r}/lb00aa-lab/../x\n\
             cgroup {r}\ncgroup /tmp/lb00aa-lab\n"
        );
        let p = registry::parse("lb00aa", &text);
        assert_eq!(p.cgroups, vec![root.join("lb00aa-lab")]);
    }
}

#[test]
fn replies_parse_and_print() {
    let r: Reply = "pod-a 10.244.1.5:40000\n".parse().unwrap();
    assert_eq!(r.name, "pod-a");
    assert_eq!(r.peer, "10.244.1.5:40000".parse::<SocketAddr>().unwrap());
    assert_eq!(r.to_string(), "pod-a 10.244.1.5:40000");
    let r6: Reply = "b [2001:db8::1]:53".parse().unwrap();
    assert_eq!(r6.peer.port(), 53);
    assert_eq!(r6.to_string().parse::<Reply>().unwrap(), r6);
    for bad in ["", "pod-a", " 1.2.3.4:5", "pod-a 1.2.3.4", "pod-a nope:1"] {
        assert!(
            matches!(bad.parse::<Reply>(), Err(RequestError::Other(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn request_errors_map_to_exit_codes_and_back() {
    let all = [
        RequestError::Refused,
        RequestError::Timeout,
        RequestError::Unreachable("no route".into()),
        RequestError::Reset,
        RequestError::Other("x".into()),
    ];
    let mut codes = std::collections::HashSet::new();
    for e in &all {
        let code = e.exit_code();
        assert!(codes.insert(code), "duplicate exit code {code}");
        assert_ne!(code, echo::EXIT_USAGE);
        let back = RequestError::from_exit_code(code, "no route").unwrap();
        assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(e));
        assert!(e.to_string().starts_with(e.kind()), "{e}");
    }
    assert_eq!(RequestError::from_exit_code(0, ""), None);
    let io = |errno| RequestError::from(std::io::Error::from_raw_os_error(errno));
    assert_eq!(io(libc::ECONNREFUSED), RequestError::Refused);
    assert_eq!(io(libc::EAGAIN), RequestError::Timeout);
    assert_eq!(io(libc::ETIMEDOUT), RequestError::Timeout);
    assert_eq!(io(libc::ECONNRESET), RequestError::Reset);
    assert!(matches!(
        io(libc::EHOSTUNREACH),
        RequestError::Unreachable(_)
    ));
    assert!(matches!(io(libc::EACCES), RequestError::Other(_)));
    let synthetic = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    assert_eq!(RequestError::from(synthetic), RequestError::Timeout);
}

#[test]
fn wait_until_returns_the_value() {
    let mut n = 0;
    let v = wait_until(T, "n to reach 3", || {
        n += 1;
        (n >= 3).then_some(n * 10)
    });
    assert_eq!(v, 30);
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn wait_until_panics_with_what() {
    wait_until(Duration::from_millis(30), "the impossible", || None::<()>);
}

#[test]
fn poll_until_times_out_near_the_deadline() {
    let start = Instant::now();
    let mut polls = 0;
    assert_eq!(
        poll_until(Duration::from_millis(100), || {
            polls += 1;
            None::<()>
        }),
        None
    );
    let took = start.elapsed();
    let deadline = scaled(Duration::from_millis(100));
    assert!(took >= deadline && took < deadline * 10, "{took:?}");
    assert!(polls >= 3, "{polls} polls");
}

/// Runs `f` on a thread in a private, empty network namespace with `lo` up when possible (root);
/// otherwise on the current namespace's loopback (ephemeral ports only). Either way nothing
/// leaves the host, and a private namespace disappears with its last socket.
fn on_loopback<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
            set_lo_up();
        } else {
            eprintln!("note: not root, echo tests use the current namespace's loopback");
        }
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn set_lo_up() {
    // SAFETY: ioctls on our own socket with a zeroed, NUL-terminated ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        assert_eq!(libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr), 0);
        libc::close(s);
    }
}

fn start_servers(ip: std::net::IpAddr, name: &str) -> (SocketAddr, SocketAddr) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let tcp = l.local_addr().unwrap();
    let n = format!("{name}-tcp");
    std::thread::spawn(move || echo::serve_tcp(&n, l));
    let u = UdpSocket::bind((ip, 0)).unwrap();
    let udp = u.local_addr().unwrap();
    let n = format!("{name}-udp");
    std::thread::spawn(move || echo::serve_udp(&n, u));
    (tcp, udp)
}

/// A port nothing listens on (bound, then closed again).
fn closed_port(ip: Ipv4Addr, udp: bool) -> SocketAddr {
    if udp {
        UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
    } else {
        TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
    }
}

#[test]
fn echo_answers_with_name_and_peer_over_tcp_and_udp() {
    on_loopback(|| {
        let (tcp, udp) = start_servers(Ipv4Addr::LOCALHOST.into(), "srv");
        let r = echo::request(tcp, false, T).unwrap();
        assert_eq!(r.name, "srv-tcp");
        assert_eq!(r.peer.ip(), Ipv4Addr::LOCALHOST);
        let r = echo::request(udp, true, T).unwrap();
        assert_eq!(r.name, "srv-udp");
        assert_eq!(r.peer.ip(), Ipv4Addr::LOCALHOST);
        for (addr, is_udp) in [(tcp, false), (udp, true)] {
            let mut c = EchoConn::connect(addr, is_udp, T).unwrap();
            let a = c.ask(T).unwrap();
            let b = c.ask(T).unwrap();
            assert_eq!(a, b, "same connection, same answer");
            assert_eq!(a.peer, c.local_addr());
            assert_eq!(c.remote_addr(), addr);
        }
    });
}

#[test]
fn udp_replies_come_from_the_address_asked() {
    // 127.0.0.2 is local too, but routing would answer from 127.0.0.1; a connected client
    // socket would then ignore the reply. IP_PKTINFO makes the server answer from 127.0.0.2.
    on_loopback(|| {
        let (_, udp) = start_servers(Ipv4Addr::UNSPECIFIED.into(), "any");
        let to = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), udp.port()));
        let r = echo::request(to, true, T).unwrap();
        assert_eq!(r.name, "any-udp");
    });
}

#[test]
fn echo_over_ipv6() {
    on_loopback(|| {
        if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
            eprintln!("note: no IPv6 loopback, skipping");
            return;
        }
        let (tcp, udp) = start_servers(Ipv6Addr::LOCALHOST.into(), "v6");
        assert_eq!(
            echo::request(tcp, false, T).unwrap().peer.ip(),
            Ipv6Addr::LOCALHOST
        );
        assert_eq!(
            echo::request(udp, true, T).unwrap().peer.ip(),
            Ipv6Addr::LOCALHOST
        );
    });
}

#[test]
fn closed_ports_are_refused_at_once() {
    on_loopback(|| {
        for udp in [false, true] {
            let addr = closed_port(Ipv4Addr::LOCALHOST, udp);
            let start = Instant::now();
            assert_eq!(
                echo::request(addr, udp, T),
                Err(RequestError::Refused),
                "udp={udp}"
            );
            // Refused, not timed out: well under the timeout (an emulated VM, `cargo xtask
            // vm-test`, takes some 200 ms where a host takes under 1).
            assert!(start.elapsed() < T / 4, "{:?}", start.elapsed());
        }
    });
}

#[test]
fn silence_is_a_timeout() {
    on_loopback(|| {
        let mute = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let start = Instant::now();
        let r = echo::request(mute.local_addr().unwrap(), true, Duration::from_millis(150));
        assert_eq!(r, Err(RequestError::Timeout));
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(
            echo::request(mute.local_addr().unwrap(), true, Duration::ZERO),
            Err(RequestError::Timeout)
        );
    });
}

/// A lab whose owner "died" (record rewritten with a wrong start time) is reaped by the next
/// `reap_stale`: its processes killed, namespaces, pin dirs, logs and record removed.
#[test]
fn reaps_labs_of_dead_owners() {
    if !require_privileged("lab::tests::reaps_labs_of_dead_owners") {
        return;
    }
    let lab = Lab::new("reap test").unwrap();
    let ns = lab.netns("stale").unwrap();
    let pin = lab.pin_dir("stale").unwrap();
    std::fs::create_dir(&pin).unwrap();
    let sleeper = ns.spawn("sleeper", "sleep", ["1000"]).unwrap();
    let pid = sleeper.pid();
    let record = Path::new(REGISTRY_DIR).join(lab.prefix());
    let log_dir = lab.log_dir().to_path_buf();
    let text = std::fs::read_to_string(&record).unwrap();
    let me = std::process::id();
    assert!(text.starts_with(&format!("owner {me} ")), "{text}");
    let forged: String = text
        .lines()
        .map(|l| {
            if l.starts_with("owner ") {
                format!("owner {me} 1\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&record, forged).unwrap();
    // Leak the lab and the guard: as if the process had been SIGKILLed.
    std::mem::forget(sleeper);
    std::mem::forget(lab);

    registry::reap_stale();
    // Another test's Lab::new may be the one reaping it; wait for the end state either way.
    let nspath = ns.path();
    wait_until(
        Duration::from_secs(10),
        "the stale lab to be reaped",
        || {
            (!nspath.exists() && !pin.exists() && !log_dir.exists() && !record.exists())
                .then_some(())
        },
    );
    wait_until(Duration::from_secs(5), "the sleeper to be killed", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, None | Some("Z")).then_some(())
    });
}
