//! A link emulator for lab hosts on kernels without `sch_netem`: what netem does on a host's
//! egress (delay ± jitter, random loss), done in user space over an NFQUEUE.
//!
//! ```text
//!  host netns                                   test process (a thread of it)
//!   socket ─► … ─► mangle POSTROUTING -o eth0 ─► NFQUEUE 29 ──netlink──► arrival: fate()
//!                                      (held in the kernel)               ├─ lost: DROP now
//!   eth0 ◄──────────── ACCEPT at arrival + delay ± jitter ◄───────────────┘─ else held in
//!                                                                            the Schedule
//! ```
//!
//! One emulator per host. Its thread enters the host's network namespace (`setns` moves only
//! the calling thread), opens the netlink socket there — a socket belongs to the namespace
//! it was made in — and then only reads and writes that socket. A thread of the test process
//! rather than a program of its own: the harness is used from test binaries and benchmark
//! binaries that live in different directories, so there would be a program to find; and the
//! emulator's life is then the [`crate::netlab::Lab`]'s, stopped by its `Drop`, with nothing
//! to reap. A test process killed by SIGKILL takes its emulators along; the kernel then drops
//! what the queue holds, and the next lab deletes the namespace with the rule.
//!
//! Semantics, as Linux netem without a `distribution` argument: each packet is lost with
//! probability `loss` when it arrives; otherwise it leaves at `arrival + delay + U(-jitter,
//! +jitter)` (uniform), so with jitter packets may be reordered. Packets are held in the
//! kernel (only their ids come to user space, `COPY_META`) in a queue whose length limit is
//! raised to [`QUEUE_MAXLEN`]; the kernel's count of packets it dropped because the queue or
//! the socket was full is reported as `overflows` in [`LinkStats`]. GSO packets are
//! segmented by the kernel before they are queued (no `F_GSO`), so loss and delay apply per
//! packet on the wire, as netem's do.
//!
//! The netlink messages, the fate of a packet, the schedule and the `iptables` arguments are
//! pure functions, tested by tables below; [`LinkEmulator`] carries them out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// The queue number in each host's namespace (queues are per namespace, so every host can
/// use the same one).
pub const QUEUE_NUM: u16 = 29;
/// How many packets the kernel holds for the queue before it drops new ones (its default is
/// 1,024): 100 ms of delay at 100,000 packets/s.
pub const QUEUE_MAXLEN: u32 = 100_000;
/// The socket's receive buffer: room for bursts of packet messages while the thread is busy.
const RECV_BUFFER: usize = 8 << 20;
/// The longest the thread sleeps without looking at its stop flag.
const TICK: Duration = Duration::from_millis(50);
/// How often the thread reads the kernel's overflow counters.
const PROC_EVERY: Duration = Duration::from_millis(500);
/// Verdict messages are sent in batches of about this many bytes.
const SEND_BATCH: usize = 32 << 10;

// Wire constants (linux/netlink.h, linux/netfilter/nfnetlink*.h).
const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
/// Attribute types carry two flag bits (nested, network byte order) above these.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// What a link does to a host's outgoing packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    pub delay: Duration,
    /// Half the width of the uniform spread around `delay`; at most `delay`.
    pub jitter: Duration,
    /// Probability (0 to 1) that a packet is lost.
    pub loss: f64,
}

impl LinkModel {
    /// The model for netem-style arguments (`delay 100ms 20ms loss 1%`).
    pub fn new(delay_ms: u32, jitter_ms: u32, loss_pct: f64) -> Result<LinkModel> {
        ensure!(
            (0.0..=100.0).contains(&loss_pct),
            "loss {loss_pct}% is not a percentage"
        );
        ensure!(
            jitter_ms <= delay_ms,
            "jitter {jitter_ms} ms larger than the delay {delay_ms} ms"
        );
        Ok(LinkModel {
            delay: Duration::from_millis(delay_ms.into()),
            jitter: Duration::from_millis(jitter_ms.into()),
            loss: loss_pct / 100.0,
        })
    }

    /// Whether the model leaves packets alone (no delay, no loss).
    pub fn is_noop(&self) -> bool {
        self.delay.is_zero() && self.loss == 0.0
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    Lost,
    /// Accepted at this time (same clock as the arrival).
    LeavesAt(Duration),
}

/// The fate of a packet arriving at `arrival`, given two draws uniform in [0, 1): the loss
/// draw and the jitter draw.
pub fn fate(model: &LinkModel, arrival: Duration, loss_draw: f64, jitter_draw: f64) -> Fate {
    if loss_draw < model.loss {
        return Fate::Lost;
    }
    let spread = model.jitter.as_secs_f64() * (2.0 * jitter_draw - 1.0);
    let delay = (model.delay.as_secs_f64() + spread).max(0.0);
    Fate::LeavesAt(arrival + Duration::from_secs_f64(delay))
}

/// Packets held until they leave, earliest first (arrival order among equal times).
pub struct Schedule {
    rng: StdRng,
    held: BinaryHeap<Reverse<(Duration, u64, u32)>>,
    arrivals: u64,
}

impl Schedule {
    /// An empty schedule whose draws come from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            arrivals: 0,
        }
    }

    /// Decides the fate of packet `id` arriving at `at`; holds it unless it is lost.
    pub fn arrive(&mut self, model: &LinkModel, id: u32, at: Duration) -> Fate {
        // Both draws every time, so the sequence of fates depends only on the seed and the
        // arrivals, not on the model's zeros.
        let loss_draw: f64 = self.rng.random();
        let jitter_draw: f64 = self.rng.random();
        let f = fate(model, at, loss_draw, jitter_draw);
        if let Fate::LeavesAt(t) = f {
            self.held.push(Reverse((t, self.arrivals, id)));
        }
        self.arrivals += 1;
        f
    }

    /// Removes and returns the packets due at `now`, in the order they leave.
    pub fn due(&mut self, now: Duration) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(Reverse((t, _, id))) = self.held.peek().copied() {
            if t > now {
                break;
            }
            self.held.pop();
            out.push(id);
        }
        out
    }

    /// When the next held packet leaves.
    pub fn next_due(&self) -> Option<Duration> {
        self.held.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Removes and returns every held packet, in the order they would have left.
    pub fn drain(&mut self) -> Vec<u32> {
        self.due(Duration::MAX)
    }

    /// How many packets are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Netlink messages

/// Appends one nfnetlink queue message: `nlmsghdr`, `nfgenmsg` (queue number as the resource
/// id, big-endian), then the attributes, each padded to 4 bytes.
fn push_message(
    buf: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    queue: u16,
    attrs: &[(u16, &[u8])],
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]); // length, filled in below
    buf.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[0, 0]); // family AF_UNSPEC, version 0
    buf.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(payload);
        buf.resize(buf.len() + (4 - len % 4) % 4, 0);
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The three configuration requests (each asking for an ack) that bind `queue` to the
/// socket, ask for packet metadata only, and raise the queue's length limit to `maxlen`.
pub fn config_messages(first_seq: u32, queue: u16, maxlen: u32) -> Vec<Vec<u8>> {
    let bind = [NFQNL_CFG_CMD_BIND, 0, 0, 0]; // command, pad, pf (unused)
    let mut params = 0u32.to_be_bytes().to_vec(); // copy range
    params.push(NFQNL_COPY_META);
    let maxlen = maxlen.to_be_bytes();
    let attrs: [(u16, &[u8]); 3] = [
        (NFQA_CFG_CMD, &bind),
        (NFQA_CFG_PARAMS, &params),
        (NFQA_CFG_QUEUE_MAXLEN, &maxlen),
    ];
    attrs
        .iter()
        .zip(first_seq..)
        .map(|(attr, seq)| {
            let mut buf = Vec::new();
            push_message(
                &mut buf,
                NFQNL_MSG_CONFIG,
                NLM_F_ACK,
                seq,
                queue,
                std::slice::from_ref(attr),
            );
            buf
        })
        .collect()
}

/// Appends the verdict (accept or drop) for packet `id` of `queue`.
pub fn push_verdict(buf: &mut Vec<u8>, seq: u32, queue: u16, id: u32, accept: bool) {
    let verdict = if accept { NF_ACCEPT } else { NF_DROP };
    let mut hdr = verdict.to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    push_message(
        buf,
        NFQNL_MSG_VERDICT,
        0,
        seq,
        queue,
        &[(NFQA_VERDICT_HDR, &hdr)],
    );
}

/// A message from the kernel, as far as the emulator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A queued packet's id.
    Packet(u32),
    /// The answer to request `seq`: 0 or a negative errno.
    Ack {
        seq: u32,
        error: i32,
    },
    Other,
}

/// Splits a datagram read from the socket into messages. A truncated or malformed tail is
/// ignored (the kernel does not send one).
pub fn parse_messages(buf: &[u8]) -> Vec<Incoming> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let body = &rest[NLMSG_HDRLEN..len];
        out.push(if kind == NLMSG_ERROR && body.len() >= 4 + NLMSG_HDRLEN {
            Incoming::Ack {
                error: i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes")),
                // The request's header follows the error: its seq is at offset 8.
                seq: u32::from_ne_bytes(body[12..16].try_into().expect("4 bytes")),
            }
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            packet_id(body).map_or(Incoming::Other, Incoming::Packet)
        } else {
            Incoming::Other
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    out
}

/// The packet id in a packet message's body (`nfgenmsg`, then attributes).
fn packet_id(body: &[u8]) -> Option<u32> {
    let mut attrs = body.get(NFGEN_HDRLEN..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes(attrs[4..8].try_into().ok()?));
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

// ---------------------------------------------------------------------------------------
// The iptables rule and the kernel's counters

/// Whether to add or delete the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOp {
    Add,
    Delete,
}

/// The `iptables` arguments that send every packet leaving by `iface` — locally made or
/// forwarded, as a qdisc on it would see them — to `queue`. Loopback is untouched.
pub fn iptables_args(op: RuleOp, iface: &str, queue: u16) -> Vec<String> {
    let op = match op {
        RuleOp::Add => "-A",
        RuleOp::Delete => "-D",
    };
    [
        "-w",
        "-t",
        "mangle",
        op,
        "POSTROUTING",
        "-o",
        iface,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The kernel's counters for one queue (a line of `/proc/net/netfilter/nfnetlink_queue`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelQueue {
    /// Packets held now.
    pub held: u64,
    /// Packets dropped because the queue was at its length limit.
    pub queue_dropped: u64,
    /// Packets dropped because the socket's receive buffer was full.
    pub user_dropped: u64,
}

/// The counters of `queue` in the text of `/proc/net/netfilter/nfnetlink_queue`, whose
/// lines read `queue portid held copy_mode copy_range queue_dropped user_dropped id_seq 1`.
pub fn parse_kernel_queue(text: &str, queue: u16) -> Option<KernelQueue> {
    text.lines().find_map(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (f.len() >= 7 && f[0] == u64::from(queue)).then(|| KernelQueue {
            held: f[2],
            queue_dropped: f[5],
            user_dropped: f[6],
        })
    })
}

// ---------------------------------------------------------------------------------------
// The emulator

/// What an emulator has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets that came through the queue.
    pub packets: u64,
    /// Packets dropped on purpose (the loss).
    pub lost: u64,
    /// Packets accepted after their delay.
    pub released: u64,
    /// Most packets held at once.
    pub held_max: u64,
    /// Packets the kernel dropped because the queue or the socket was full (not asked for).
    pub overflows: u64,
    /// Verdicts the kernel refused.
    pub verdict_errors: u64,
}

struct Shared {
    model: Mutex<LinkModel>,
    stop: AtomicBool,
    stats: Mutex<LinkStats>,
}

/// A running emulator on one host's egress: the queue's thread and the iptables rule.
/// Stopping (or dropping) it removes the rule and releases what it holds.
pub struct LinkEmulator {
    netns: String,
    iface: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<()>>>,
    rule: bool,
}

impl LinkEmulator {
    /// Starts emulating `model` on the egress of `iface` in the namespace `netns` (a name
    /// under `/run/netns`): binds the queue, then adds the rule. `seed` seeds the draws.
    pub fn start(netns: &str, iface: &str, model: LinkModel, seed: u64) -> Result<LinkEmulator> {
        let ns = File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("open network namespace {netns}"))?;
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            stop: AtomicBool::new(false),
            stats: Mutex::new(LinkStats::default()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("linkem-{netns}"))
            .spawn(move || -> Result<()> {
                let sock = match open_queue(&ns) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let result = serve(&sock, &thread_shared, seed);
                if let Err(e) = &result {
                    // Said at once: from here on the host's egress is cut (nobody gives the
                    // queued packets a verdict), which a test would otherwise see as a hang.
                    eprintln!("link emulator thread: {e:#}");
                }
                result
            })
            .context("spawn the link emulator thread")?;
        let mut em = LinkEmulator {
            netns: netns.to_string(),
            iface: iface.to_string(),
            shared,
            thread: Some(thread),
            rule: false,
        };
        ready_rx
            .recv()
            .context("the link emulator thread ended before binding its queue")?
            .with_context(|| format!("bind NFQUEUE {QUEUE_NUM} in {netns}"))?;
        iptables(netns, &iptables_args(RuleOp::Add, iface, QUEUE_NUM))?;
        em.rule = true;
        Ok(em)
    }

    /// Changes the model; packets already held keep the time they were given.
    pub fn set_model(&self, model: LinkModel) {
        *self.shared.model.lock().expect("model lock") = model;
    }

    /// The counts so far (overflows as of the thread's last look at the kernel's counters,
    /// at most 0.5 s old).
    pub fn stats(&self) -> LinkStats {
        *self.shared.stats.lock().expect("stats lock")
    }

    /// Removes the rule, then stops the thread, which accepts what it still holds.
    pub fn stop(mut self) -> Result<LinkStats> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<LinkStats> {
        let rule = if std::mem::take(&mut self.rule) {
            iptables(
                &self.netns,
                &iptables_args(RuleOp::Delete, &self.iface, QUEUE_NUM),
            )
        } else {
            Ok(())
        };
        self.shared.stop.store(true, Ordering::Relaxed);
        let thread = match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the link emulator thread panicked"))
                .and_then(|r| r),
            None => Ok(()),
        };
        rule?;
        thread.with_context(|| format!("link emulator in {}", self.netns))?;
        Ok(self.stats())
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("{e:#}");
        }
    }
}

/// Runs `iptables ARGS` in `netns`, failing with its stderr.
fn iptables(netns: &str, args: &[String]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "iptables"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run iptables (Debian package iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables {} in {netns} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread that has entered the network namespace `netns`: sockets it makes
/// belong to that namespace. The test process's other threads are not moved.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("open network namespace {netns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .with_context(|| format!("enter network namespace {netns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
    })
}

/// Enters the namespace (this thread only), opens the netlink socket and configures the
/// queue.
fn open_queue(ns: &File) -> Result<OwnedFd> {
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .context("enter the network namespace")?;
    // Close-on-exec: a program another thread starts (a kith box, `ip`) must not inherit the
    // socket, or the queue would stay bound after the emulator closes it.
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::NETFILTER),
    )
    .context("open a netfilter netlink socket")?;
    rustix::net::bind(&sock, &SocketAddrNetlink::new(0, 0)).context("bind netlink")?;
    rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, RECV_BUFFER)
        .context("raise the netlink receive buffer")?;
    let mut buf = vec![0u8; 8192];
    for (i, msg) in config_messages(1, QUEUE_NUM, QUEUE_MAXLEN)
        .into_iter()
        .enumerate()
    {
        let seq = 1 + i as u32;
        send(&sock, &msg)?;
        loop {
            let (_, n) = rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty())
                .context("read the kernel's answer")?;
            let ack = parse_messages(&buf[..n.min(buf.len())])
                .into_iter()
                .find_map(|m| match m {
                    Incoming::Ack { seq: s, error } if s == seq => Some(error),
                    _ => None,
                });
            match ack {
                Some(0) => break,
                Some(e) => bail!(
                    "queue configuration step {} refused: {}",
                    i + 1,
                    Errno::from_raw_os_error(-e)
                ),
                None => continue,
            }
        }
    }
    Ok(sock)
}

fn send(sock: &OwnedFd, buf: &[u8]) -> Result<()> {
    rustix::net::sendto(sock, buf, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))
        .context("send to netlink")?;
    Ok(())
}

/// The thread's loop: take packets in, give verdicts when due, until told to stop; then
/// accept whatever is still held.
fn serve(sock: &OwnedFd, shared: &Shared, seed: u64) -> Result<()> {
    let epoch = Instant::now();
    let mut schedule = Schedule::new(seed);
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(SEND_BATCH + 1024);
    let mut seq = 100u32;
    let mut stats = LinkStats::default();
    let mut last_proc = Instant::now();
    let mut verdict = |out: &mut Vec<u8>, id: u32, accept: bool| {
        seq = seq.wrapping_add(1);
        push_verdict(out, seq, QUEUE_NUM, id, accept);
    };
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed);
        let due = if stopping {
            schedule.drain()
        } else {
            schedule.due(epoch.elapsed())
        };
        for id in due {
            verdict(&mut out, id, true);
            stats.released += 1;
            if out.len() >= SEND_BATCH {
                send(sock, &out)?;
                out.clear();
            }
        }
        if !out.is_empty() {
            send(sock, &out)?;
            out.clear();
        }
        if stopping || last_proc.elapsed() >= PROC_EVERY {
            // /proc/net follows the namespace of the thread that reads it.
            if let Some(k) =
                std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
                    .ok()
                    .and_then(|t| parse_kernel_queue(&t, QUEUE_NUM))
            {
                stats.overflows = k.queue_dropped + k.user_dropped;
            }
            last_proc = Instant::now();
        }
        *shared.stats.lock().expect("stats lock") = stats;
        if stopping {
            return Ok(());
        }
        let wait = schedule
            .next_due()
            .map_or(TICK, |t| t.saturating_sub(epoch.elapsed()))
            .min(TICK);
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as _,
        };
        match poll(&mut [PollFd::new(sock, PollFlags::IN)], Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e).context("poll the queue socket"),
        }
        let model = *shared.model.lock().expect("model lock");
        loop {
            let n = match rustix::net::recv(sock, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((_, n)) => n.min(buf.len()),
                Err(Errno::AGAIN) => break,
                // The kernel counts what it could not deliver (user_dropped).
                Err(Errno::NOBUFS) | Err(Errno::INTR) => continue,
                Err(e) => return Err(e).context("read the queue socket"),
            };
            let now = epoch.elapsed();
            for m in parse_messages(&buf[..n]) {
                match m {
                    Incoming::Packet(id) => {
                        stats.packets += 1;
                        if schedule.arrive(&model, id, now) == Fate::Lost {
                            stats.lost += 1;
                            verdict(&mut out, id, false);
                        }
                    }
                    Incoming::Ack { error, .. } if error != 0 => stats.verdict_errors += 1,
                    _ => {}
                }
            }
            stats.held_max = stats.held_max.max(schedule.len() as u64);
        }
        if !out.is_empty() {
            send(sock, &out)?;
            out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn models_from_netem_arguments() {
        // (delay, jitter, loss %, model or None)
        let table = [
            (100, 20, 1.0, Some((ms(100), ms(20), 0.01))),
            (25, 0, 0.0, Some((ms(25), ms(0), 0.0))),
            (0, 0, 50.0, Some((ms(0), ms(0), 0.5))),
            (10, 20, 0.0, None),
            (10, 0, 100.5, None),
            (10, 0, -1.0, None),
        ];
        for (d, j, l, want) in table {
            let got = LinkModel::new(d, j, l)
                .ok()
                .map(|m| (m.delay, m.jitter, m.loss));
            assert_eq!(got, want, "{d} {j} {l}");
        }
        assert!(LinkModel::new(0, 0, 0.0).unwrap().is_noop());
        assert!(!LinkModel::new(0, 0, 0.1).unwrap().is_noop());
        assert!(!LinkModel::new(1, 0, 0.0).unwrap().is_noop());
    }

    #[test]
    fn fate_of_one_packet() {
        let m = LinkModel::new(100, 20, 1.0).unwrap();
        // (arrival ms, loss draw, jitter draw, fate)
        let table = [
            (0, 0.5, 0.5, Fate::LeavesAt(ms(100))),
            (0, 0.5, 0.0, Fate::LeavesAt(ms(80))),
            (10, 0.5, 0.75, Fate::LeavesAt(ms(120))),
            (10, 0.009, 0.5, Fate::Lost),
            (10, 0.01, 0.5, Fate::LeavesAt(ms(110))),
        ];
        for (at, l, j, want) in table {
            let got = fate(&m, ms(at), l, j);
            let close = match (got, want) {
                (Fate::LeavesAt(a), Fate::LeavesAt(b)) => a.abs_diff(b) < Duration::from_micros(1),
                (a, b) => a == b,
            };
            assert!(close, "{at} {l} {j}: {got:?} != {want:?}");
        }
        // No loss never loses, whatever the draw; full loss always does.
        let none = LinkModel::new(5, 0, 0.0).unwrap();
        assert_eq!(fate(&none, ms(0), 0.0, 0.3), Fate::LeavesAt(ms(5)));
        let all = LinkModel::new(5, 0, 100.0).unwrap();
        assert_eq!(fate(&all, ms(0), 0.999_999, 0.3), Fate::Lost);
    }

    #[test]
    fn schedule_releases_in_time_order() {
        // Without jitter: first in, first out, each exactly `delay` after it came.
        let m = LinkModel::new(50, 0, 0.0).unwrap();
        let mut s = Schedule::new(7);
        for (id, at) in [(1, 0), (2, 10), (3, 10), (4, 30)] {
            assert_eq!(s.arrive(&m, id, ms(at)), Fate::LeavesAt(ms(at + 50)));
        }
        // (now ms, released, next due ms)
        let table = [
            (49, vec![], Some(50)),
            (50, vec![1], Some(60)),
            (75, vec![2, 3], Some(80)),
            (79, vec![], Some(80)),
            (200, vec![4], None),
        ];
        for (now, want, next) in table {
            assert_eq!(s.due(ms(now)), want, "at {now}");
            assert_eq!(s.next_due(), next.map(ms), "after {now}");
        }
        assert!(s.is_empty());
    }

    #[test]
    fn seeded_schedule_is_repeatable_and_within_bounds() {
        let m = LinkModel::new(100, 20, 1.0).unwrap();
        let run = |seed| {
            let mut s = Schedule::new(seed);
            let fates: Vec<Fate> = (0..20_000)
                .map(|i| s.arrive(&m, i, ms(u64::from(i) / 10)))
                .collect();
            (fates, s.drain())
        };
        let (fates, order) = run(42);
        assert_eq!(
            run(42),
            (fates.clone(), order.clone()),
            "same seed, same fates"
        );
        assert_ne!(run(43).0, fates, "another seed draws otherwise");
        let lost = fates.iter().filter(|f| **f == Fate::Lost).count();
        // 1 % of 20,000: 200, standard deviation 14.
        assert!((120..=280).contains(&lost), "{lost} lost");
        let mut reordered = 0;
        let mut last = Duration::ZERO;
        for (i, f) in fates.iter().enumerate() {
            if let Fate::LeavesAt(t) = f {
                let delay = *t - ms(i as u64 / 10);
                assert!(delay >= ms(80) && delay <= ms(120), "delay {delay:?}");
                reordered += usize::from(*t < last);
                last = last.max(*t);
            }
        }
        // With ±20 ms of jitter and 10 packets/ms, packets overtake each other, as in netem.
        assert!(reordered > 0);
        assert_eq!(order.len(), fates.len() - lost);
    }

    #[test]
    fn config_and_verdict_messages() {
        let msgs = config_messages(5, 29, 100_000);
        let hex: Vec<String> = msgs
            .iter()
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        // len | type 0x0302 (queue config) | flags request+ack | seq | port 0 | nfgenmsg
        // (AF_UNSPEC, v0, queue 29 big-endian) | attribute
        let head =
            |len: &str, seq: u8| format!("{len}000000 0203 0500 {seq:02x}000000 00000000 0000001d");
        assert_eq!(
            hex,
            vec![
                // NFQA_CFG_CMD: bind
                format!("{} 0800 0100 01000000", head("1c", 5)),
                // NFQA_CFG_PARAMS: copy range 0, COPY_META, padded
                format!("{} 0900 0200 00000000 01 000000", head("20", 6)),
                // NFQA_CFG_QUEUE_MAXLEN: 100,000 big-endian
                format!("{} 0800 0300 000186a0", head("1c", 7)),
            ]
            .into_iter()
            .map(|h| h.replace(' ', ""))
            .collect::<Vec<_>>()
        );
        // (id, accept, verdict header: verdict then id, both big-endian)
        let table = [
            (1, true, "0000000100000001"),
            (0x01020304, false, "0000000001020304"),
        ];
        for (id, accept, want) in table {
            let mut buf = Vec::new();
            push_verdict(&mut buf, 9, 29, id, accept);
            let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex,
                // len 32 | type 0x0301 (verdict) | flags request | seq 9 | port 0 | nfgenmsg |
                // NFQA_VERDICT_HDR
                format!("20000000 0103 0100 09000000 00000000 0000001d 0c00 0200 {want}")
                    .replace(' ', ""),
                "{id} {accept}"
            );
        }
    }

    /// A packet message as the kernel sends it: the packet header attribute after others.
    fn packet_message(id: u32, first_attr_type: u16) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 3]); // hw protocol IPv4, hook POSTROUTING
        let mark = 0u32.to_be_bytes();
        let mut buf = Vec::new();
        push_message(
            &mut buf,
            NFQNL_MSG_PACKET,
            0,
            0,
            29,
            &[(first_attr_type, &mark), (NFQA_PACKET_HDR | 0x4000, &hdr)],
        );
        buf
    }

    #[test]
    fn parses_packets_and_acks() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&[0; 10]);
        ack.extend_from_slice(&(-1i32).to_ne_bytes()); // EPERM
        ack.extend_from_slice(&[0; 8]);
        ack.extend_from_slice(&6u32.to_ne_bytes()); // the request's seq
        ack.extend_from_slice(&[0; 4]);
        let mut two = packet_message(7, 3);
        two.extend(packet_message(0xfffffffe, 5));
        let mut cut = packet_message(8, 3);
        cut.truncate(cut.len() - 3);
        // (datagram, messages)
        let table: [(Vec<u8>, Vec<Incoming>); 5] = [
            (packet_message(42, 3), vec![Incoming::Packet(42)]),
            (two, vec![Incoming::Packet(7), Incoming::Packet(0xfffffffe)]),
            (ack, vec![Incoming::Ack { seq: 6, error: -1 }]),
            (cut, vec![]),
            (vec![1, 2, 3], vec![]),
        ];
        for (i, (buf, want)) in table.into_iter().enumerate() {
            assert_eq!(parse_messages(&buf), want, "case {i}");
        }
    }

    #[test]
    fn iptables_rule() {
        // (op, arguments)
        let table = [
            (
                RuleOp::Add,
                "-w -t mangle -A POSTROUTING -o eth0 -j NFQUEUE --queue-num 29",
            ),
            (
                RuleOp::Delete,
                "-w -t mangle -D POSTROUTING -o eth0 -j NFQUEUE --queue-num 29",
            ),
        ];
        for (op, want) in table {
            assert_eq!(iptables_args(op, "eth0", 29).join(" "), want, "{op:?}");
        }
    }

    #[test]
    fn kernel_queue_counters() {
        let text = "    3   1234     0 2 65535     0     0        0  1\n   29 412345    17 1     0     5     2      999  1\n";
        // (queue, counters)
        let table = [
            (
                29,
                Some(KernelQueue {
                    held: 17,
                    queue_dropped: 5,
                    user_dropped: 2,
                }),
            ),
            (3, Some(KernelQueue::default())),
            (4, None),
        ];
        for (q, want) in table {
            assert_eq!(parse_kernel_queue(text, q), want, "queue {q}");
        }
        assert_eq!(parse_kernel_queue("", 29), None);
    }
}
