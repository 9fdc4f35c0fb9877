//! The `kith` command: `kith up` runs a one-box cluster; `kith image import` loads an
//! image archive into this box's store; `kith token create` prints a join token.
//!
//! Every refusal is one line on stderr naming the command (`kith up: ...`) and exit code 1:
//! these are the first messages a new user meets, so no backtraces and no `Error: ` debris.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kith_control::up::{self, UpConfig};

#[derive(Parser)]
#[command(
    name = "kith",
    version,
    about = "A Kubernetes-compatible orchestrator for the edge of the network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a one-box cluster: control plane of one, API on HTTPS, state under --data-dir.
    Up {
        /// Where all state lives (certificates, Raft log, kubeconfig).
        #[arg(long, default_value = "/var/lib/kith")]
        data_dir: PathBuf,
        /// Address the Kubernetes API listens on.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// How many recent events a watch can resume from (older → 410 Expired).
        #[arg(long, default_value_t = kith_api::store::state::DEFAULT_HISTORY)]
        watch_history: usize,
        /// Run only the control plane: no agent, no containers on this box.
        #[arg(long)]
        no_agent: bool,
        /// The Node this box registers as (default: the hostname).
        #[arg(long)]
        node_name: Option<String>,
        /// A registry reached over plain HTTP (loopback registries always are); repeatable.
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registries: Vec<String>,
        /// The range nodes' podCIDRs (one /24 each) are taken from.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
        /// The pod bridge and nftables table of this box's agent.
        #[arg(long, default_value = "kith0", hide = true)]
        pod_bridge: String,
        /// Give containers that ask for no seccompProfile the RuntimeDefault profile
        /// instead of none (the kubelet's --seccomp-default).
        #[arg(long)]
        seccomp_default: bool,
        #[command(flatten)]
        image_gc: ImageGcArgs,
    },
    /// Run one control box of a multi-box region (Raft over mutual TLS between boxes): the
    /// first box founds the region; the others join it with --join and --token.
    Control {
        #[command(subcommand)]
        command: Option<ControlCommand>,
        /// Where all state lives (certificates, Raft log, kubeconfig).
        #[arg(long, default_value = "/var/lib/kith", global = true)]
        data_dir: PathBuf,
        /// Address the Kubernetes API listens on.
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// Address of the Raft port, which the other control boxes reach this one at.
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
        /// The API URL of any box of the region to join (first start only).
        #[arg(long, requires = "token")]
        join: Option<String>,
        /// A join token from `kith token create` on a box of the region.
        #[arg(long, env = "KITH_TOKEN")]
        token: Option<String>,
        /// How many recent events a watch can resume from (older → 410 Expired).
        #[arg(long, default_value_t = kith_api::store::state::DEFAULT_HISTORY)]
        watch_history: usize,
        /// The range nodes' podCIDRs (one /24 each) are taken from.
        #[arg(long, default_value = "10.244.0.0/16")]
        cluster_cidr: String,
        /// Raft heartbeat interval.
        #[arg(long, default_value_t = kith_control::region::Timers::default().heartbeat_ms)]
        heartbeat_ms: u64,
        /// A follower campaigns after a random time in [N, 1.5N] ms (after a 1.5N ms leader lease)
        /// without a heartbeat.
        #[arg(long, default_value_t = kith_control::region::Timers::default().election_min_ms)]
        election_timeout_ms: u64,
        /// Build a snapshot (and trim the log) after this many applied entries.
        #[arg(long, default_value_t = kith_control::region::Timers::default().snapshot_every)]
        snapshot_every: u64,
    },
    /// Run this box's agent against a cluster: join with a token the first time, then run
    /// the pods the scheduler binds here.
    Agent {
        /// An API server of the region, e.g. https://192.0.2.10:6443; repeatable: the agent
        /// joins through the first that answers and fails over between them. Kept in the
        /// agent's kubeconfig: a restart without --server uses the stored ones.
        #[arg(long)]
        server: Vec<String>,
        /// A join token from `kith token create` (needed until the agent has joined).
        #[arg(long, env = "KITH_TOKEN")]
        token: Option<String>,
        /// Where the agent keeps its credentials, images, containers and logs.
        #[arg(long, default_value = "/var/lib/kith-agent")]
        data_dir: PathBuf,
        /// The Node this box registers as (default: the hostname).
        #[arg(long)]
        node_name: Option<String>,
        /// The address the control plane reaches this box at (its InternalIP and the
        /// node port's certificate); default: the local address towards the first server.
        #[arg(long)]
        node_ip: Option<std::net::IpAddr>,
        /// The HTTPS port the API server reaches this agent at for logs, exec and stats.
        #[arg(long, default_value_t = kith_api::remote_node::DEFAULT_NODE_PORT)]
        node_port: u16,
        /// A registry reached over plain HTTP (loopback registries always are); repeatable.
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registries: Vec<String>,
        /// The pod bridge and nftables table of this agent.
        #[arg(long, default_value = "kith0", hide = true)]
        pod_bridge: String,
        /// Give containers that ask for no seccompProfile the RuntimeDefault profile
        /// instead of none (the kubelet's --seccomp-default).
        #[arg(long)]
        seccomp_default: bool,
        #[command(flatten)]
        image_gc: ImageGcArgs,
    },
    /// Internal: the per-container shim the agent starts (`kith shim run <dir>`).
    #[command(hide = true)]
    Shim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Images in this box's store.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// What each namespace and node used (CPU, memory over time, network), from the meter
    /// the agent keeps under --data-dir; totals survive restarts.
    Usage {
        #[arg(long, default_value = "/var/lib/kith")]
        data_dir: PathBuf,
        /// Only the hours since this long ago, e.g. 30m, 24h, 7d.
        #[arg(long)]
        since: Option<String>,
    },
    /// Join tokens for agents and control boxes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum ControlCommand {
    /// Take this (running) control box out of its region; it stops once removed. With
    /// --node-id, remove another member instead (a box that is gone for good).
    Leave {
        #[arg(long)]
        node_id: Option<u64>,
    },
    /// List the region's members as this (running) box sees them.
    Members,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token and print it. The box on --data-dir must be running: tokens are
    /// kept in the cluster's store (kube-system/bootstrap-token-<id>), valid on every box.
    Create {
        #[arg(long, default_value = "/var/lib/kith")]
        data_dir: PathBuf,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Print the read-only metrics bearer token instead (group kith:metrics-readers:
        /// `/metrics`, every agent's `/api/v1/nodes/NAME/proxy/metrics` and health only),
        /// for Prometheus. It does not expire.
        #[arg(long, conflicts_with = "ttl")]
        metrics: bool,
    },
}

/// When an agent removes unused images to free disk (the kubelet's flags and defaults).
#[derive(Args)]
struct ImageGcArgs {
    /// Remove unused images when the image filesystem is at least this full (percent).
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u64,
    /// ... until it is no fuller than this (percent).
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u64,
}

impl ImageGcArgs {
    fn policy(&self) -> anyhow::Result<kith_agent::image::gc::GcPolicy> {
        let d = kith_agent::image::gc::GcPolicy::default();
        kith_agent::image::gc::GcPolicy::new(
            self.image_gc_high_threshold,
            self.image_gc_low_threshold,
            d.period,
        )
        .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Load an OCI image-layout tar (`skopeo copy ... oci-archive:FILE`) or a `docker save`
    /// tar into the agent's store, so pods using `imagePullPolicy: IfNotPresent` or `Never`
    /// start without a registry. Prints each imported image name.
    Import {
        /// The archive.
        file: PathBuf,
        /// The data directory of `kith up` (images go to DIR/agent/images).
        #[arg(long, default_value = "/var/lib/kith")]
        data_dir: PathBuf,
    },
}

impl Command {
    /// How the command names itself in its one-line errors.
    fn name(&self) -> &'static str {
        match self {
            Command::Up { .. } => "kith up",
            Command::Control { command: None, .. } => "kith control",
            Command::Control {
                command: Some(ControlCommand::Leave { .. }),
                ..
            } => "kith control leave",
            Command::Control {
                command: Some(ControlCommand::Members),
                ..
            } => "kith control members",
            Command::Agent { .. } => "kith agent",
            Command::Shim { .. } => "kith shim",
            Command::Image { .. } => "kith image import",
            Command::Usage { .. } => "kith usage",
            Command::Token { .. } => "kith token create",
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let name = cli.command.name();
    if let Err(e) = run(cli) {
        eprintln!("{name}: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, `: `-joined. Many of our errors already spell
/// out their source in their own message; a cause already said is not said again.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // A one-shot command's output is its result; progress logs are for the long-running ones.
    let default_filter = match cli.command {
        Command::Image { .. }
        | Command::Token { .. }
        | Command::Usage { .. }
        | Command::Control {
            command: Some(_), ..
        } => "warn",
        Command::Up { .. }
        | Command::Control { command: None, .. }
        | Command::Agent { .. }
        | Command::Shim { .. } => "info,openraft=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITH_LOG")
        .unwrap_or_else(|_| default_filter.into());
    if let Command::Shim { args } = cli.command {
        // The container's processes are forked from the shim and see the container's
        // stderr as fd 2 until they exec; logging to a private copy of fd 2 keeps
        // libcontainer's messages in the shim's log, out of the container's.
        let log = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned()?);
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(log))
            .init();
        // Before any runtime exists: the shim must stay single-threaded.
        std::process::exit(kith_agent::runtime::shim::main(args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Shim { .. } => unreachable!("handled before the logger is set up"),
        Command::Up {
            data_dir,
            listen,
            watch_history,
            no_agent,
            node_name,
            insecure_registries,
            cluster_cidr,
            pod_bridge,
            seccomp_default,
            image_gc,
        } => {
            let cluster_cidr = parse_cluster_cidr(&cluster_cidr)?;
            let agent = if no_agent {
                None
            } else {
                let node_name = node_name_or_hostname(node_name)?;
                Some(kith_agent::run::AgentOptions {
                    node_name,
                    data_dir: data_dir.join("agent"),
                    insecure_registries,
                    shim_binary: std::env::current_exe().context("locating the kith binary")?,
                    node_ip: None,
                    bridge: pod_bridge,
                    node_port: kith_api::remote_node::DEFAULT_NODE_PORT,
                    image_gc: image_gc.policy()?,
                    seccomp_default,
                })
            };
            if agent.is_some() {
                // Refuse before anything is created, with the reason, not a backtrace.
                up::preflight(&up::HostFacts::read())?;
            }
            let cfg = UpConfig {
                data_dir,
                listen,
                watch_history,
                agent,
                cluster_cidr,
                region: None,
            };
            serve_until_signal(cfg, "kith is up", &["kubectl get namespaces"])
        }
        Command::Control {
            command: Some(command),
            data_dir,
            ..
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match command {
                ControlCommand::Leave { node_id } => {
                    let id = rt.block_on(kith_control::region::leave(&data_dir, node_id))?;
                    match node_id {
                        None => println!("this box left its region; it stops now"),
                        Some(_) => println!("removed member {id} from the region"),
                    }
                }
                ControlCommand::Members => {
                    let m = rt.block_on(kith_control::region::members(&data_dir))?;
                    print!("{}", kith_control::region::members_table(&m));
                }
            }
            Ok(())
        }
        Command::Control {
            command: None,
            data_dir,
            listen,
            peer_listen,
            join,
            token,
            watch_history,
            cluster_cidr,
            heartbeat_ms,
            election_timeout_ms,
            snapshot_every,
        } => {
            let cluster_cidr = parse_cluster_cidr(&cluster_cidr)?;
            let peer_listen = peer_listen.context("--peer-listen is required")?;
            let join = join.map(|server| kith_control::region::Join {
                server,
                token: token.unwrap_or_default(),
            });
            let region = kith_control::region::RegionConfig {
                peer_listen,
                join,
                timers: kith_control::region::Timers {
                    heartbeat_ms,
                    election_min_ms: election_timeout_ms,
                    snapshot_every,
                    ..Default::default()
                },
            };
            let cfg = UpConfig {
                data_dir,
                listen,
                watch_history,
                agent: None,
                cluster_cidr,
                region: Some(region),
            };
            serve_until_signal(cfg, "kith control box is up", &[])
        }
        Command::Image {
            command: ImageCommand::Import { file, data_dir },
        } => {
            // The same layout as the agent's (agent/src/run.rs): DATA_DIR/agent/images.
            let dir = data_dir.join("agent").join("images");
            let store = kith_agent::image::RegistryImageStore::open(&dir, Vec::new())?;
            for name in kith_agent::image::import_archive(&store, &file)? {
                println!("imported {name}");
            }
            Ok(())
        }
        Command::Agent {
            server,
            token,
            data_dir,
            node_name,
            node_ip,
            node_port,
            insecure_registries,
            pod_bridge,
            seccomp_default,
            image_gc,
        } => {
            // First, before any thread or side effect: this may execute the process anew.
            if let Err(e) = kith_agent::sync::idle::run_with_agent_tunables() {
                tracing::warn!(%e, "could not restart with the agent's allocator settings; going on with glibc's defaults");
            }
            up::preflight(&up::HostFacts::read())?;
            let node_name = node_name_or_hostname(node_name)?;
            let kubeconfig = data_dir.join("kubeconfig");
            let joined = kubeconfig.exists();
            let servers = if joined {
                kith_agent::join::update_servers(&kubeconfig, &server)?
            } else {
                server
            };
            let node_ip = node_ip.or_else(|| {
                servers
                    .iter()
                    .find_map(|s| kith_agent::join::local_ip_towards(s))
            });
            let opts = kith_agent::run::AgentOptions {
                node_name: node_name.clone(),
                data_dir: data_dir.clone(),
                insecure_registries,
                shim_binary: std::env::current_exe().context("locating the kith binary")?,
                node_ip,
                bridge: pod_bridge,
                node_port,
                image_gc: image_gc.policy()?,
                seccomp_default,
            };
            // The agent's blocking work is short file-system work (rootfs preparation,
            // image store, stats reads); tokio's default of up to 512 blocking threads
            // let 20 pods starting at once spawn ~30, each with its own stack and malloc
            // arena, alive 10 s after the burst. Eight keep a 2-core box busy.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(8)
                .build()?;
            rt.block_on(async move {
                if !joined {
                    let Some(token) = token else {
                        anyhow::bail!(
                            "{} has no credentials yet: pass --token (from `kith token create` on a control box)",
                            data_dir.display()
                        );
                    };
                    if servers.is_empty() {
                        anyhow::bail!("pass --server (an API server of the region) to join");
                    }
                    let addresses: Vec<_> = node_ip.into_iter().collect();
                    let via = kith_agent::join::bootstrap(
                        &servers,
                        &token,
                        &node_name,
                        &addresses,
                        &kubeconfig,
                    )
                    .await?;
                    println!("joined {via} as node {node_name}");
                }
                let client = kith_agent::join::client_from_kubeconfig(&kubeconfig).await?;
                let stats = opts.stats();
                let node_port = kith_agent::node_server::start(&opts, stats.clone(), &kubeconfig)
                    .await?;
                kith_agent::run::run(client, opts, stats, shutdown_signal()).await?;
                if let Some(task) = node_port {
                    task.abort();
                }
                Ok(())
            })
        }
        Command::Usage { data_dir, since } => {
            let since = match since {
                Some(s) => {
                    let back = kith_control::pki::parse_ttl(&s).context("--since")?;
                    Some(jiff::Timestamp::now() - jiff::SignedDuration::try_from(back)?)
                }
                None => None,
            };
            // `kith up` keeps its agent under DATA_DIR/agent; `kith agent` uses DATA_DIR.
            let file = kith_agent::stats::metering::FILE;
            let path = [data_dir.join("agent").join(file), data_dir.join(file)]
                .into_iter()
                .find(|p| p.exists())
                .unwrap_or_else(|| data_dir.join("agent").join(file));
            let meter = kith_agent::stats::metering::Meter::load(&path)?.with_context(|| {
                format!("no meter at {} (has an agent run here?)", path.display())
            })?;
            print!(
                "{}",
                kith_agent::stats::metering::usage_tables(&meter, since)
            );
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    data_dir,
                    metrics: true,
                    ..
                },
        } => {
            let token = kith_control::pki::metrics_token_in(&data_dir)
                .with_context(|| format!("reading the metrics token in {}", data_dir.display()))?;
            println!("{token}");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { data_dir, ttl, .. },
        } => {
            let ttl = kith_control::pki::parse_ttl(&ttl).context("--ttl")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let token = rt
                .block_on(kith_control::pki::create_join_token_in(&data_dir, ttl))
                .with_context(|| format!("creating a join token for {}", data_dir.display()))?;
            println!("{token}");
            Ok(())
        }
    }
}

/// `--cluster-cidr`, checked.
fn parse_cluster_cidr(text: &str) -> anyhow::Result<kith_control::controllers::nodeipam::Cidr> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("--cluster-cidr {text}: {e}"))
}

/// Run a control box (`kith up`, `kith control`) until SIGTERM or SIGINT; once it serves,
/// say so (`greeting`), where its kubeconfig is, and what to try next (`hints`).
fn serve_until_signal(cfg: UpConfig, greeting: &str, hints: &[&str]) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(up::run(
        cfg,
        |kubeconfig, url| {
            println!("{greeting}; the Kubernetes API serves at {url}");
            println!("  export KUBECONFIG={}", kubeconfig.display());
            for hint in hints {
                println!("  {hint}");
            }
        },
        shutdown_signal(),
    ))
    .map_err(anyhow::Error::from)
}

/// The Node name: as given, else the hostname in lower case.
fn node_name_or_hostname(name: Option<String>) -> anyhow::Result<String> {
    match name {
        Some(n) => Ok(n),
        None => Ok(nix::unistd::gethostname()
            .context("reading the hostname for the node name")?
            .to_string_lossy()
            .to_lowercase()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug)]
    struct Wraps(&'static str, std::io::Error);

    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn errors_print_on_one_line_without_repeats() {
        let io = || std::io::Error::other("disk full");
        let cases: Vec<(anyhow::Error, &str)> = vec![
            (anyhow::anyhow!("plain"), "plain"),
            (
                anyhow::Error::from(io()).context("writing x"),
                "writing x: disk full",
            ),
            // The message already names its source: said once.
            (
                anyhow::Error::from(Wraps("opening f: disk full", io())),
                "opening f: disk full",
            ),
            (
                anyhow::Error::from(Wraps("opening f", io())).context("importing"),
                "importing: opening f: disk full",
            ),
            (anyhow::anyhow!("two\nlines"), "two lines"),
        ];
        for (error, want) in cases {
            assert_eq!(one_line(&error), want, "{error:?}");
        }
    }
}
