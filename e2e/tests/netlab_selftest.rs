//! The namespace lab (`kith_e2e::netlab`) does what region tests rely on: hosts reach each
//! other and the test process, faults (partition, cut, netem) take effect and undo, processes
//! can be killed and restarted, and nothing is left behind — also after a panic. With etcd
//! installed, a 3-member etcd cluster (the region benchmark's baseline) forms in a lab.
//!
//! Runs as root (namespaces, veths, nftables).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use kith_e2e::etcd::{etcd_bin, start_etcd_cluster, EtcdConn};
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

/// Namespaces and root interfaces whose names start with the lab's name.
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
