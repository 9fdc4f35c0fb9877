//! Pod container → OCI runtime spec (`config.json`), as a pure function.
//!
//! ```text
//!  Pod + Container ─┐
//!  ImageDefaults ───┤                      ┌─ process (argv, env, cwd, user, caps)
//!  resolved data ───┼─► spec::build(..) ──►├─ mounts (defaults, volumes, hosts, resolv.conf)
//!  host paths ──────┤                      ├─ linux (namespaces, cgroups, resources, masks)
//!  seccomp input ───┘                      └─ linux.seccomp (see [`seccomp`])
//! ```
//! Everything the builder needs from the outside world (ConfigMap/Secret data, volume
//! host paths, the network namespace) arrives already resolved, so every rule here is
//! tested by tables. What cannot be honoured comes back as a [`SpecError`] whose message
//! becomes the container's waiting reason.

mod env;
mod quantity;
pub mod seccomp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::runtime::Spec;
use serde_json::{json, Value};

pub use env::{expand, field_ref, Env};
pub use quantity::{bytes as quantity_bytes, milli_cpu};
pub use seccomp::{LocalhostProfiles, ProfileDir, SeccompError, SeccompInput};

/// Why a container cannot get a runtime spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command: neither the container nor the image gives one")]
    NoCommand,
    #[error("invalid quantity {0:?}")]
    Quantity(String),
    #[error("missing {0}")]
    MissingSource(String),
    #[error("volume {0:?} is mounted but the pod has no such prepared volume")]
    UnknownVolume(String),
    #[error("container has runAsNonRoot and image will run as root")]
    RunAsRoot,
    #[error("image has non-numeric user {0:?}, cannot verify user is non-root")]
    NonNumericUser(String),
    #[error("unknown capability {0:?}")]
    Capability(String),
    #[error("{0}")]
    Invalid(String),
    #[error("generated spec is invalid: {0}")]
    Oci(String),
    /// The runtime cannot apply the pod's seccomp profile: `CreateContainerError`, as
    /// containerd reports it, where the other variants are configuration errors.
    #[error("{0}")]
    Seccomp(#[from] SeccompError),
}

/// What the image's config says about running it (mapped by the caller from the image
/// module's config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid` (numeric), or empty for root. Names are not resolved here.
    pub user: Option<String>,
}

/// The node's allocatable resources, used when the downward API asks for a limit the
/// container does not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
}

/// Everything [`build`] reads.
#[derive(Debug, Clone)]
pub struct ContainerInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageDefaults,
    /// ConfigMap name → data, for `configMapKeyRef` and `envFrom.configMapRef`.
    pub config_maps: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// Secret name → decoded data, for `secretKeyRef` and `envFrom.secretRef`.
    pub secrets: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub node: NodeAllocatable,
    /// The container's root filesystem (may be replaced by the runtime with its own mount).
    pub rootfs: PathBuf,
    /// Pod volume name → host directory (or file) prepared by the caller.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The pod's network namespace to join; `None` gives the container a new, empty one.
    pub netns: Option<PathBuf>,
    /// Absolute cgroups path, e.g. `/kith/<pod uid>/<container>`.
    pub cgroups_path: String,
    pub hostname: String,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub pids_limit: Option<i64>,
    /// `--seccomp-default` and where Localhost seccomp profiles are read from.
    pub seccomp: SeccompInput<'a>,
}

/// The capabilities containerd gives a container that asks for nothing special.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows (0..=40), for privileged containers and `add: [ALL]`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's default masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The kubelet's CPU period (µs) and minimums.
const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const MIN_QUOTA: i64 = 1_000;

/// Builds the OCI runtime spec for one container of a pod.
pub fn build(input: &ContainerInput) -> Result<Spec, SpecError> {
    let c = input.container;
    let container_env = env::container_env(input)?;
    let mut full_env = Env::from_image(&input.image.env);
    full_env.merge(&container_env);

    let args = argv(input, &container_env)?;
    let (uid, gid, additional_gids) = user(input)?;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let caps = capabilities(input, privileged)?;
    let seccomp = seccomp::decide(input.pod, c, privileged, &caps, input.seccomp)?;
    let no_new_privileges =
        !privileged && sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    let read_only_root = sc
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);

    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| input.image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "workingDir {cwd:?} is not absolute"
        )));
    }
    if !input.cgroups_path.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "cgroups path {:?} is not absolute",
            input.cgroups_path
        )));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.push(match &input.netns {
        Some(p) => json!({"type": "network", "path": p}),
        None => json!({"type": "network"}),
    });

    let caps_json: Vec<&str> = caps.iter().map(String::as_str).collect();
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroups_path,
        "resources": resources(input)?,
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(filter) = &seccomp {
        linux["seccomp"] =
            serde_json::to_value(filter).map_err(|e| SpecError::Oci(e.to_string()))?;
    }

    let mut user_json = json!({"uid": uid, "gid": gid});
    if !additional_gids.is_empty() {
        user_json["additionalGids"] = json!(additional_gids);
    }

    let mut process = json!({
        "terminal": false,
        "user": user_json,
        "args": args,
        "env": full_env.to_oci(),
        "cwd": cwd,
        "capabilities": {
            "bounding": caps_json,
            "effective": caps_json,
            "permitted": caps_json,
        },
    });
    // Only when set: libcontainer loads the seccomp filter after dropping capabilities
    // whenever the field is present, even `false`, and without no_new_privs or
    // CAP_SYS_ADMIN the kernel refuses the filter then. Absent, it loads the filter
    // first, as runc does; absent and `false` mean the same to the OCI spec.
    if no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": read_only_root},
        "hostname": input.hostname,
        "mounts": mounts(input, &container_env, privileged)?,
        "linux": linux,
    });
    serde_json::from_value(spec).map_err(|e| SpecError::Oci(e.to_string()))
}

/// `command` replaces ENTRYPOINT and drops CMD; `args` replaces CMD; both expanded
/// against the container's own environment.
fn argv(input: &ContainerInput, env: &Env) -> Result<Vec<String>, SpecError> {
    let c = input.container;
    let lookup = |n: &str| env.get(n);
    let expand_all = |v: &[String]| v.iter().map(|s| expand(s, &lookup)).collect::<Vec<_>>();
    let command = c.command.as_deref().filter(|v| !v.is_empty());
    let args = c.args.as_deref().filter(|v| !v.is_empty());
    let argv = match (command, args) {
        (Some(cmd), args) => {
            let mut v = expand_all(cmd);
            v.extend(expand_all(args.unwrap_or_default()));
            v
        }
        (None, Some(args)) => {
            let mut v = input.image.entrypoint.clone();
            v.extend(expand_all(args));
            v
        }
        (None, None) => {
            let mut v = input.image.entrypoint.clone();
            v.extend(input.image.cmd.iter().cloned());
            v
        }
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// (uid, gid, additional gids): container securityContext over pod securityContext over
/// the image's USER.
fn user(input: &ContainerInput) -> Result<(u32, u32, Vec<u32>), SpecError> {
    let csc = input.container.security_context.as_ref();
    let psc = input
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let id = |v: i64, what: &str| {
        u32::try_from(v).map_err(|_| SpecError::Invalid(format!("{what} {v} is out of range")))
    };
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);

    let image_user = input.image.user.as_deref().unwrap_or("").trim();
    let (image_uid, image_gid): (Option<u32>, Option<u32>) = if image_user.is_empty() {
        (Some(0), None)
    } else {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        (u.parse().ok(), g.and_then(|g| g.parse().ok()))
    };
    let uid = match run_as_user {
        Some(u) => id(u, "runAsUser")?,
        None => image_uid.ok_or_else(|| SpecError::NonNumericUser(image_user.to_string()))?,
    };
    if non_root && uid == 0 {
        return Err(SpecError::RunAsRoot);
    }
    let gid = match run_as_group {
        Some(g) => id(g, "runAsGroup")?,
        None => image_gid.unwrap_or(0),
    };
    let mut extra = BTreeSet::new();
    if let Some(psc) = psc {
        for g in psc.supplemental_groups.iter().flatten() {
            extra.insert(id(*g, "supplementalGroups")?);
        }
        if let Some(g) = psc.fs_group {
            extra.insert(id(g, "fsGroup")?);
        }
    }
    Ok((uid, gid, extra.into_iter().collect()))
}

fn cap_name(name: &str) -> Result<String, SpecError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::Capability(name.to_string()))
    }
}

/// containerd's order: add ALL, drop ALL, then the named adds, then the named drops.
fn capabilities(input: &ContainerInput, privileged: bool) -> Result<Vec<String>, SpecError> {
    if privileged {
        return Ok(ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect());
    }
    let caps = input
        .container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let add: Vec<&String> = caps
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let drop: Vec<&String> = caps
        .and_then(|c| c.drop.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let is_all = |s: &&String| s.eq_ignore_ascii_case("ALL");
    let mut set: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    let insert = |set: &mut Vec<String>, c: String| {
        if !set.contains(&c) {
            set.push(c);
        }
    };
    if add.iter().any(is_all) {
        for c in ALL_CAPABILITIES {
            insert(&mut set, c.to_string());
        }
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for a in add.iter().filter(|a| !is_all(a)) {
        insert(&mut set, cap_name(a)?);
    }
    for d in drop.iter().filter(|d| !is_all(d)) {
        let d = cap_name(d)?;
        set.retain(|c| *c != d);
    }
    Ok(set)
}

/// CPU and memory as the kubelet computes them: shares from the request (the limit when
/// no request is given, 2 when neither), CFS quota from the limit, memory limit in bytes.
fn resources(input: &ContainerInput) -> Result<Value, SpecError> {
    let r = input.container.resources.as_ref();
    let get =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.and_then(|m| m.get(k)).map(|q| q.0.clone());
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let cpu_limit = get(limits, "cpu")
        .map(|q| quantity::milli_cpu(&q))
        .transpose()?;
    let cpu_request = get(requests, "cpu")
        .map(|q| quantity::milli_cpu(&q))
        .transpose()?;
    let mem_limit = get(limits, "memory")
        .map(|q| quantity::bytes(&q))
        .transpose()?;

    let shares = match cpu_request.or(cpu_limit) {
        Some(m) => (m * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES),
        None => MIN_SHARES,
    };
    let mut cpu = json!({"shares": shares});
    if let Some(limit) = cpu_limit {
        cpu["quota"] = json!((limit * CPU_PERIOD / 1000).max(MIN_QUOTA));
        cpu["period"] = json!(CPU_PERIOD);
    }
    let mut res = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "cpu": cpu,
    });
    if let Some(m) = mem_limit {
        res["memory"] = json!({"limit": m});
    }
    if let Some(p) = input.pids_limit {
        res["pids"] = json!({"limit": p});
    }
    Ok(res)
}

/// Default mounts (containerd's set), then the container's volumes, then the pod's
/// /etc/hosts and /etc/resolv.conf unless a volume already covers them.
fn mounts(input: &ContainerInput, env: &Env, privileged: bool) -> Result<Vec<Value>, SpecError> {
    let sys_opts: Vec<&str> = if privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut out = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    let mut destinations = BTreeSet::new();
    for vm in input.container.volume_mounts.iter().flatten() {
        let host = input
            .volumes
            .get(&vm.name)
            .ok_or_else(|| SpecError::UnknownVolume(vm.name.clone()))?;
        if !vm.mount_path.starts_with('/') {
            return Err(SpecError::Invalid(format!(
                "volume {:?}: mountPath {:?} is not absolute",
                vm.name, vm.mount_path
            )));
        }
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(e)) if !e.is_empty() => Some(expand(e, &|n| env.get(n))),
            _ => None,
        };
        let source = match sub {
            Some(sub) => host.join(checked_sub_path(&vm.name, &sub)?),
            None => host.clone(),
        };
        let propagation = match vm.mount_propagation.as_deref() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") if privileged => "rshared",
            Some("Bidirectional") => {
                return Err(SpecError::Invalid(format!(
                    "volume {:?}: Bidirectional mount propagation needs a privileged container",
                    vm.name
                )))
            }
            Some(other) => {
                return Err(SpecError::Invalid(format!(
                    "volume {:?}: unknown mountPropagation {other:?}",
                    vm.name
                )))
            }
        };
        let rw = if vm.read_only.unwrap_or(false) {
            "ro"
        } else {
            "rw"
        };
        destinations.insert(vm.mount_path.trim_end_matches('/').to_string());
        out.push(
            json!({"destination": vm.mount_path, "type": "bind", "source": source,
                        "options": ["rbind", propagation, rw]}),
        );
    }
    for (dest, file) in [
        ("/etc/hosts", &input.hosts_file),
        ("/etc/resolv.conf", &input.resolv_conf),
    ] {
        if let Some(file) = file {
            if !destinations.contains(dest) {
                out.push(json!({"destination": dest, "type": "bind", "source": file,
                                "options": ["rbind", "rprivate", "rw"]}));
            }
        }
    }
    Ok(out)
}

/// subPath must stay inside the volume: relative, no `..`.
fn checked_sub_path(volume: &str, sub: &str) -> Result<PathBuf, SpecError> {
    let p = Path::new(sub);
    let ok = p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok || p.is_absolute() {
        return Err(SpecError::Invalid(format!(
            "volume {volume:?}: subPath {sub:?} must be a relative path without '..'"
        )));
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests;
