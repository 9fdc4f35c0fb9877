//! The namespace lab (`kith_e2e::netlab`) does what region tests rely on: hosts reach each
//! other and the test process, faults (partition, cut, netem) take effect and undo, processes
//! can be killed and restarted, and nothing is left behind — also after a panic. Slow and
//! lossy links work on a kernel without `sch_netem` (the NFQUEUE emulator). With etcd
//! installed, a 3-member etcd cluster (the region benchmark's baseline) forms in a lab.
//!
//! Runs as root (namespaces, veths, nftables, iptables).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use kith_e2e::etcd::{etcd_bin, start_etcd_cluster, EtcdConn};
use kith_e2e::linkem::QUEUE_NUM;
use kith_e2e::netlab::{Lab, NetemUnsupported};

const BUSYBOX: &str = "/bin/busybox";
const HTTP_PORT: u16 = 8080;
const PAGE: &str = "hello from h1";

/// GET / from the test process itself (root namespace), failing after 2 s.
fn get_from_test(addr: Ipv4Addr) -> Result<String> {
    let sa = SocketAddr::from((addr, HTTP_PORT));
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
        .with_context(|| format!("connect {sa}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// GET / from inside a host with busybox nc, failing after 2 s to connect. (Debian's
/// static busybox 1.35 `wget` segfaults on some machines, `nc` does not.)
fn get_from_host(lab: &Lab, host: &str, addr: Ipv4Addr) -> Result<String> {
    let script =
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {BUSYBOX} nc -w 2 {addr} {HTTP_PORT}");
    let out = lab.exec(host, BUSYBOX, ["sh", "-c", &script])?;
    ensure!(
        out.status.success(),
        "GET http://{addr}:{HTTP_PORT}/ from {host}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries `f` until it succeeds (links and ARP take a moment after a change).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e.context(what.to_string())),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn reachable(lab: &Lab, addr: Ipv4Addr, from_host: &str) -> Result<()> {
    ensure!(
        get_from_test(addr)?.contains(PAGE),
        "test process got no page"
    );
    ensure!(
        get_from_host(lab, from_host, addr)?.contains(PAGE),
        "{from_host} got no page"
    );
    Ok(())
}

/// The average RTT in ms of three pings from `host` to `addr` (busybox's summary line
/// `round-trip min/avg/max = 0.071/0.085/0.104 ms`).
fn ping_avg_ms(lab: &Lab, host: &str, addr: Ipv4Addr) -> Result<f64> {
    let out = lab.exec(
        host,
        BUSYBOX,
        ["ping", "-c", "3", "-W", "2", "-q", &addr.to_string()],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("round-trip"))
        .with_context(|| format!("no ping summary from {host} to {addr}:\n{text}"))?;
    let avg = line
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .with_context(|| format!("bad ping summary {line:?}"))?;
    Ok(avg.parse()?)
}

/// Namespaces, root interfaces and temp directories named after the lab.
fn leftovers(name: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let out = Command::new("ip").args(args).output()?;
        ensure!(out.status.success(), "ip {args:?} failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(name) {
                found.push(line.to_string());
            }
        }
    }
    // The lab's directory (hosts' data and logs).
    let dir = format!("kith-lab-{name}-");
    for e in std::fs::read_dir(std::env::temp_dir())? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(&dir) {
            found.push(e.path().display().to_string());
        }
    }
    Ok(found)
}

fn faults_and_processes(lab: &mut Lab) -> Result<()> {
    let h1 = lab.add_host("h1")?;
    let h2 = lab.add_host("h2")?;
    let h3 = lab.add_host("h3")?;
    let www = lab.host_dir("h1")?.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), PAGE)?;
    let port = HTTP_PORT.to_string();
    let www = www.to_string_lossy().into_owned();
    lab.spawn(
        "h1",
        "httpd",
        BUSYBOX,
        ["httpd", "-f", "-p", &port, "-h", &www],
        &[],
    )?;
    eventually("httpd on h1 serves", || reachable(lab, h1, "h2"))?;

    // Hosts reach the test process too.
    let root = lab.root_addr();
    let ping = ping_avg_ms(lab, "h3", root)?;
    ensure!(ping < 50.0, "h3 → test process RTT {ping} ms");

    lab.partition("h1", &["h2"])?;
    ensure!(
        get_from_host(lab, "h2", h1).is_err(),
        "h2 still reaches partitioned h1"
    );
    ensure!(
        get_from_test(h1)?.contains(PAGE),
        "the test process lost h1 in a partition"
    );
    ensure!(
        get_from_host(lab, "h3", h1)?.contains(PAGE),
        "h3 lost h1 in a partition from h2 only"
    );
    lab.heal("h1")?;
    eventually("h1 reachable after heal", || reachable(lab, h1, "h2"))?;

    lab.cut("h1")?;
    ensure!(get_from_test(h1).is_err(), "test process reaches cut h1");
    ensure!(get_from_host(lab, "h2", h1).is_err(), "h2 reaches cut h1");
    lab.restore("h1")?;
    eventually("h1 reachable after restore", || reachable(lab, h1, "h2"))?;

    match lab.netem("h2", 100, 0, 0.0) {
        Ok(()) => {
            let rtt = ping_avg_ms(lab, "h2", h3)?;
            ensure!(rtt >= 100.0, "RTT h2 → h3 with 100 ms netem: {rtt} ms");
            lab.clear_netem("h2")?;
            let rtt = ping_avg_ms(lab, "h2", h3)?;
            ensure!(rtt < 50.0, "RTT h2 → h3 after clear_netem: {rtt} ms");
        }
        Err(e) if e.downcast_ref::<NetemUnsupported>().is_some() => {
            eprintln!("SKIP netem part: {e:#}");
        }
        Err(e) => return Err(e),
    }

    let pid = lab.pid("httpd").context("httpd has a pid")?;
    ensure!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim() == "busybox",
        "the pid is the program's, not ip's"
    );
    lab.kill9("httpd")?;
    ensure!(!lab.running("httpd"), "httpd runs after kill9");
    ensure!(get_from_test(h1).is_err(), "httpd answers after kill9");
    lab.restart("httpd")?;
    ensure!(lab.running("httpd"), "httpd not running after restart");
    eventually("httpd serves after restart", || reachable(lab, h1, "h2"))?;
    let log = lab.log("httpd");
    ensure!(
        log.contains("start #1") && log.contains("start #2"),
        "log not appended across restarts:\n{log}"
    );
    let status = lab.stop("httpd")?;
    ensure!(!lab.running("httpd"), "httpd runs after stop ({status})");
    let _ = h2;
    Ok(())
}

#[test]
fn hosts_faults_processes_and_cleanup() {
    let mut lab = Lab::new("self").expect("create lab");
    let name = lab.name().to_string();
    let lock = lab.lock_file().expect("lock file").to_path_buf();
    let dir = lab.dir().to_path_buf();
    ensure_ok(faults_and_processes(&mut lab));
    // A process still running at drop is killed too.
    lab.spawn("h3", "sleeper", BUSYBOX, ["sleep", "600"], &[])
        .expect("spawn sleeper");
    let pid = lab.pid("sleeper").expect("sleeper pid");
    drop(lab);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleeper survived the lab"
    );
    assert_eq!(leftovers(&name).unwrap(), Vec::<String>::new());
    assert!(!lock.exists(), "lock file {} remains", lock.display());
    assert!(!dir.exists(), "lab dir {} remains", dir.display());
}

/// Panics with the error while the lab is alive, so its processes' logs are printed.
fn ensure_ok(r: Result<()>) {
    if let Err(e) = r {
        panic!("{e:#}");
    }
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new("panic").expect("create lab");
        lab.add_host("a").expect("add host");
        lab.add_host("b").expect("add host");
        lab.partition("a", &["b"]).expect("partition");
        lab.spawn("a", "sleeper", BUSYBOX, ["sleep", "600"], &[])
            .expect("spawn");
        seen = Some((
            lab.name().to_string(),
            lab.lock_file().expect("lock").to_path_buf(),
            lab.pid("sleeper").expect("pid"),
        ));
        panic!("on purpose");
    }));
    assert!(result.is_err());
    let (name, lock, pid) = seen.expect("lab was made");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(leftovers(&name).unwrap(), Vec::<String>::new());
    assert!(!lock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_replicates() {
    if etcd_bin().is_none() {
        eprintln!("SKIP: no etcd binary (install etcd-server or set KITH_ETCD)");
        return;
    }
    let mut lab = Lab::new("etcd").expect("create lab");
    let body = async {
        for h in ["e1", "e2", "e3"] {
            lab.add_host(h)?;
        }
        let urls = start_etcd_cluster(&mut lab, &["e1", "e2", "e3"]).await?;
        ensure!(urls.len() == 3, "urls {urls:?}");
        EtcdConn::connect(&urls[0])
            .await?
            .put("netlab/k", "v1")
            .await?;
        let got = EtcdConn::connect(&urls[2]).await?.get("netlab/k").await?;
        if got.as_deref() != Some("v1") {
            bail!("member 3 read {got:?} after a put on member 1");
        }
        Ok(())
    };
    ensure_ok(body.await);
}

/// Whether `pid` runs (a zombie does not: it only waits for its parent to reap it).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.starts_with(" Z"))
    })
}

/// Not a test of its own: the process [`a_killed_test_process_is_cleaned_up_after`] starts
/// and SIGKILLs, holding a lab (with a process in it) when it dies.
#[test]
#[ignore = "run by a_killed_test_process_is_cleaned_up_after"]
fn lab_holder() {
    let Some(out) = std::env::var_os("KITH_NETLAB_HOLDER_OUT") else {
        return;
    };
    let mut lab = Lab::new("dead").expect("create lab");
    lab.add_host("a").expect("add host");
    lab.spawn("a", "sleeper", BUSYBOX, ["sleep", "600"], &[])
        .expect("spawn");
    let line = format!(
        "{} {} {}",
        lab.name(),
        lab.lock_file().expect("lock").display(),
        lab.pid("sleeper").expect("pid")
    );
    let tmp = std::path::PathBuf::from(&out).with_extension("tmp");
    std::fs::write(&tmp, line).expect("write");
    std::fs::rename(&tmp, &out).expect("rename");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_test_process_is_cleaned_up_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("holder");
    let mut holder = Command::new(std::env::current_exe().expect("own binary"))
        .args(["--exact", "lab_holder", "--ignored", "--nocapture"])
        .env("KITH_NETLAB_HOLDER_OUT", &out)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the holder process");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no Drop runs, as when a test times out.
    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap the holder");
    let line = std::fs::read_to_string(&out).expect("the holder made a lab within 30 s");
    let mut parts = line.split(' ');
    let (name, lock, pid) = (
        parts.next().expect("name").to_string(),
        std::path::PathBuf::from(parts.next().expect("lock")),
        parts.next().expect("pid").parse::<u32>().expect("pid"),
    );
    assert!(
        !leftovers(&name).unwrap().is_empty(),
        "the killed process left nothing, so this test shows nothing"
    );
    assert!(alive(pid), "the sleeper died with the holder");

    let lab = Lab::new("after").expect("create lab");
    assert_eq!(leftovers(&name).unwrap(), Vec::<String>::new());
    assert!(!alive(pid), "the dead lab's sleeper still runs");
    assert!(
        !lock.exists() || lab.lock_file() == Some(lock.as_path()),
        "the dead lab's lock file {} remains",
        lock.display()
    );
}

// ---------------------------------------------------------------------------------------
// Slow and lossy links

const ECHO_PORT: u16 = 7007;
const UDP_PORT: u16 = 7008;
/// What a TCP round trip may take beyond the link's delay on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(30);

/// Serves TCP echo on `host` (the listener is made in its namespace; the serving thread need
/// not be) until the client closes its one connection.
fn echo_server(lab: &Lab, host: &str) -> Result<std::thread::JoinHandle<()>> {
    let addr = lab.addr(host)?;
    let listener = lab.run_in(host, || TcpListener::bind((addr, ECHO_PORT)))??;
    Ok(std::thread::spawn(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.set_nodelay(true);
            let mut buf = [0u8; 64];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            if buf.starts_with(b"bye") {
                return;
            }
        }
    }))
}

/// From `client`: the time to connect to `server`'s echo port, and the median of 5 echo
/// round trips on that connection.
fn tcp_round_trips(
    lab: &Lab,
    client: &str,
    server: Ipv4Addr,
    last: bool,
) -> Result<(Duration, Duration)> {
    lab.run_in(client, || -> Result<(Duration, Duration)> {
        let began = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&(server, ECHO_PORT).into(), Duration::from_secs(5))?;
        let connect = began.elapsed();
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut echoes = Vec::new();
        for i in 0..5 {
            let msg: &[u8] = if last && i == 4 { b"bye" } else { b"ping" };
            let began = Instant::now();
            s.write_all(msg)?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)?;
            echoes.push(began.elapsed());
            ensure!(buf == msg, "echo {buf:?}");
        }
        echoes.sort();
        Ok((connect, echoes[2]))
    })?
}

/// Sends `n` UDP datagrams from `from` to `to`; returns how many arrived.
fn udp_delivered(lab: &Lab, from: &str, to: &str, n: usize) -> Result<usize> {
    let to_addr = lab.addr(to)?;
    let rx = lab.run_in(to, || UdpSocket::bind((to_addr, UDP_PORT)))??;
    let tx = lab.run_in(from, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    for i in 0..n {
        tx.send_to(&(i as u32).to_be_bytes(), (to_addr, UDP_PORT))?;
        // Paced, so no socket buffer on the way overflows.
        std::thread::sleep(Duration::from_micros(500));
    }
    rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut got = 0;
    let mut buf = [0u8; 16];
    while rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    Ok(got)
}

/// The NFQUEUE rules and bound queues left in a host's namespace.
fn emulator_traces(lab: &Lab, host: &str) -> Result<Vec<String>> {
    let out = lab.exec(
        host,
        "iptables",
        ["-w", "-t", "mangle", "-S", "POSTROUTING"],
    )?;
    ensure!(
        out.status.success(),
        "iptables -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .map(String::from)
        .collect();
    let queues = lab.run_in(host, || {
        std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
    })??;
    found.extend(
        queues
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(&QUEUE_NUM.to_string()))
            .map(|l| format!("bound queue: {l}")),
    );
    Ok(found)
}

/// Threads of this process whose name says they are link emulators.
fn emulator_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("linkem-"))
                .collect()
        })
        .unwrap_or_default()
}

fn slow_and_lossy(lab: &mut Lab) -> Result<()> {
    lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let server = echo_server(lab, "b")?;
    let delay = Duration::from_millis(50);

    let (connect, echo) = tcp_round_trips(lab, "a", b, false)?;
    eprintln!("plain link: connect {connect:?}, echo {echo:?}");
    ensure!(
        echo < Duration::from_millis(20),
        "echo over a plain veth took {echo:?}"
    );

    // Only b's egress is slowed: each of a's round trips to b crosses it once.
    lab.netem("b", 50, 0, 0.0)?;
    let (connect, echo) = tcp_round_trips(lab, "a", b, false)?;
    eprintln!(
        "50 ms on b: connect {connect:?}, echo {echo:?}, {:?}",
        lab.link_stats("b")?
    );
    for (what, took) in [("connect", connect), ("echo", echo)] {
        ensure!(
            took >= delay && took < delay + SLACK,
            "{what} with 50 ms on b took {took:?}"
        );
    }

    lab.netem("b", 0, 0, 50.0)?;
    let got = udp_delivered(lab, "b", "a", 200)?;
    let stats = lab.link_stats("b")?;
    eprintln!("50 % loss on b: {got} of 200 datagrams arrived, {stats:?}");
    // Binomial(200, 0.5): 100 ± 7.
    ensure!(
        (40..=160).contains(&got),
        "{got} of 200 arrived with 50 % loss"
    );
    lab.netem("b", 5, 0, 0.0)?;
    let got = udp_delivered(lab, "b", "a", 200)?;
    ensure!(got == 200, "{got} of 200 arrived with no loss");
    // Loss in the other direction only (a → b has no setting).
    lab.netem("b", 0, 0, 50.0)?;
    let got = udp_delivered(lab, "a", "b", 200)?;
    ensure!(
        got == 200,
        "{got} of 200 arrived from a, whose egress has no setting"
    );
    if let Some(stats) = lab.link_stats("b")? {
        ensure!(stats.overflows == 0, "the queue overflowed: {stats:?}");
        ensure!(stats.lost >= 40, "the emulator counted {} lost", stats.lost);
    }

    lab.clear_netem("b")?;
    let (connect, echo) = tcp_round_trips(lab, "a", b, true)?;
    eprintln!("after clear_netem: connect {connect:?}, echo {echo:?}");
    ensure!(
        echo < Duration::from_millis(20),
        "echo after clear_netem took {echo:?}"
    );
    ensure!(lab.link_stats("b")?.is_none(), "stats after clear_netem");
    let traces = emulator_traces(lab, "b")?;
    ensure!(traces.is_empty(), "left after clear_netem: {traces:?}");
    ensure!(
        emulator_threads().is_empty(),
        "threads: {:?}",
        emulator_threads()
    );
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))?;

    // Dropping the lab stops an emulator still running.
    lab.netem("a", 100, 20, 1.0)?;
    Ok(())
}

#[test]
fn slow_and_lossy_links_and_their_undo() {
    let mut lab = Lab::new("slow").expect("create lab");
    let name = lab.name().to_string();
    ensure_ok(slow_and_lossy(&mut lab));
    drop(lab);
    assert_eq!(emulator_threads(), Vec::<String>::new());
    assert_eq!(leftovers(&name).unwrap(), Vec::<String>::new());
}
