//! `securityContext.seccompProfile` → the OCI `linux.seccomp` filter, as the kubelet and
//! containerd decide it, and kith's own default profile.
//!
//! ```text
//!  container.securityContext.seccompProfile ─┐ (container wins)
//!  pod.securityContext.seccompProfile ───────┤
//!  --seccomp-default (unset → RuntimeDefault)┼─► decide(..) ─► None (unconfined)
//!  privileged, effective capabilities ───────┤               ├► Some(default_profile(caps))
//!  LocalhostProfiles (<data dir>/seccomp) ───┘               ├► Some(profile file)
//!                                                            └► Err(SeccompError)
//! ```
//! The only outside input, a Localhost profile's bytes, comes through the small
//! [`LocalhostProfiles`] trait, so [`decide`] is tested by tables with an in-memory map.
//!
//! The default profile is an allow list (anything not named fails with EPERM), in the
//! shape of Docker's documented default: what a container needs to run ordinary programs
//! is allowed; what changes the host (kernel modules, kexec, reboot, clock, swap, mounts),
//! escapes or widens the container (namespaces, `open_by_handle_at`), reaches the kernel's
//! riskiest interfaces (bpf, perf, userfaultfd, keyrings, io_uring) or reads other
//! processes (`process_vm_*`, `kcmp`) is not — unless the container holds the capability
//! the kernel would ask for anyway, in which case the filter gets out of the way as
//! Docker's does.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Why a container cannot get the seccomp filter it asks for. The container is not
/// started: running it unconfined instead would silently drop what the user asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccompProfile type Localhost needs localhostProfile")]
    MissingLocalhostProfile,
    #[error("localhost seccomp profile {0:?} must be a relative path inside the profile directory, without '..'")]
    EscapingPath(String),
    #[error("cannot read localhost seccomp profile {path:?}: {message}")]
    Read { path: String, message: String },
    #[error("localhost seccomp profile {path:?} is not a valid seccomp profile: {message}")]
    Invalid { path: String, message: String },
    #[error("unknown seccompProfile type {0:?}")]
    UnknownType(String),
    #[error("building the default seccomp profile: {0}")]
    Build(String),
}

/// Where `Localhost` profiles come from: a directory on a real agent
/// ([`ProfileDir`]), a map in tests. `Sync`: the agent holds one across awaits.
pub trait LocalhostProfiles: Sync {
    /// The bytes of the profile at `relative` (already checked to be a plain relative
    /// path), or a message saying why not.
    fn read(&self, relative: &Path) -> Result<Vec<u8>, String>;
    /// How the profile is named in messages (the full path on a real agent).
    fn display(&self, relative: &Path) -> String {
        relative.display().to_string()
    }
}

/// Profiles under one directory: `<agent data dir>/seccomp`, as the kubelet's
/// `/var/lib/kubelet/seccomp`.
#[derive(Debug, Clone)]
pub struct ProfileDir(pub PathBuf);

impl LocalhostProfiles for ProfileDir {
    fn read(&self, relative: &Path) -> Result<Vec<u8>, String> {
        let path = self.0.join(relative);
        // `relative` has no `..`, but a symlink inside the directory could still point
        // out of it: resolve both and compare.
        let root = std::fs::canonicalize(&self.0).map_err(|e| e.to_string())?;
        let real = std::fs::canonicalize(&path).map_err(|e| e.to_string())?;
        if !real.starts_with(&root) {
            return Err(format!(
                "it resolves to {} outside {}",
                real.display(),
                root.display()
            ));
        }
        std::fs::read(&real).map_err(|e| e.to_string())
    }

    fn display(&self, relative: &Path) -> String {
        self.0.join(relative).display().to_string()
    }
}

/// What the agent was told about seccomp (`kith agent --seccomp-default`).
#[derive(Clone, Copy)]
pub struct SeccompInput<'a> {
    /// The kubelet's `--seccomp-default`: an unset profile means RuntimeDefault instead
    /// of Unconfined.
    pub default_runtime_default: bool,
    pub profiles: &'a dyn LocalhostProfiles,
}

impl std::fmt::Debug for SeccompInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeccompInput")
            .field("default_runtime_default", &self.default_runtime_default)
            .finish_non_exhaustive()
    }
}

/// The filter for one container: `None` runs it unconfined.
///
/// The container's `seccompProfile` wins over the pod's; with neither, RuntimeDefault
/// when `--seccomp-default` is on, else Unconfined. A privileged container is never
/// filtered (containerd ignores the profile for it). `capabilities` is the container's
/// effective set (`CAP_*` names), which opens the calls their capability governs.
pub fn decide(
    pod: &Pod,
    container: &Container,
    privileged: bool,
    capabilities: &[String],
    input: SeccompInput<'_>,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    if privileged {
        return Ok(None);
    }
    let of_container = container
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref());
    let of_pod = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.seccomp_profile.as_ref());
    let Some(profile) = of_container.or(of_pod) else {
        return if input.default_runtime_default {
            default_profile(capabilities).map(Some)
        } else {
            Ok(None)
        };
    };
    profile_of(profile, capabilities, input.profiles)
}

fn profile_of(
    profile: &SeccompProfile,
    capabilities: &[String],
    profiles: &dyn LocalhostProfiles,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    match profile.type_.as_str() {
        "Unconfined" => Ok(None),
        "RuntimeDefault" => default_profile(capabilities).map(Some),
        "Localhost" => {
            let name = profile
                .localhost_profile
                .as_deref()
                .filter(|n| !n.is_empty())
                .ok_or(SeccompError::MissingLocalhostProfile)?;
            let relative = checked_relative(name)?;
            let shown = profiles.display(&relative);
            let bytes = profiles
                .read(&relative)
                .map_err(|message| SeccompError::Read {
                    path: shown.clone(),
                    message,
                })?;
            parse_profile(&bytes)
                .map(Some)
                .map_err(|message| SeccompError::Invalid {
                    path: shown,
                    message,
                })
        }
        other => Err(SeccompError::UnknownType(other.to_string())),
    }
}

/// The Kubernetes rule for `localhostProfile`: a relative path that stays below the
/// profile directory.
fn checked_relative(name: &str) -> Result<PathBuf, SeccompError> {
    let p = Path::new(name);
    let plain = p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    // `./x.json` names `x.json`: keep the normal components only.
    let normal: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if !plain || p.is_absolute() || normal.as_os_str().is_empty() {
        return Err(SeccompError::EscapingPath(name.to_string()));
    }
    Ok(normal)
}

/// A profile file in the OCI / Docker format (`defaultAction`, `architectures`,
/// `syscalls[].names/action/args/errnoRet`). Docker-only keys (`comment`, `includes`,
/// `excludes`, `archMap`) are ignored; without `architectures` the filter covers the
/// native one. An empty profile or one naming no syscall at all is refused: it is far
/// more likely a mistake than a wish.
pub fn parse_profile(bytes: &[u8]) -> Result<LinuxSeccomp, String> {
    let profile: LinuxSeccomp = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    for rule in profile.syscalls().iter().flatten() {
        if rule.names().is_empty() || rule.names().iter().any(|n| n.is_empty()) {
            return Err("a syscalls entry has no names".into());
        }
    }
    if profile.listener_path().is_some() || has_notify(&profile) {
        // SCMP_ACT_NOTIFY needs a seccomp agent listening; kith has none.
        return Err("SCMP_ACT_NOTIFY is not supported".into());
    }
    Ok(profile)
}

fn has_notify(p: &LinuxSeccomp) -> bool {
    p.default_action() == LinuxSeccompAction::ScmpActNotify
        || p.syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Namespace flags of clone(2) (and unshare(2)): CLONE_NEWNS, CLONE_NEWCGROUP,
/// CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// personality(2) values a container may set: PER_LINUX, PER_LINUX32 (32-bit `uname`),
/// UNAME26 and its 32-bit form (old software that parses the kernel version), and
/// 0xffffffff, which only queries. Others (e.g. ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC)
/// weaken ASLR or memory protections.
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Allowed to every container: what ordinary programs, libcs and language runtimes
/// call. Each group says why it is harmless inside a container (the kernel's own checks
/// and the container's namespaces and cgroups still apply).
pub const ALLOWED: &[(&str, &[&str])] = &[
    (
        "files and directories: path-based I/O confined by the mount namespace",
        &[
            "access",
            "chdir",
            "chmod",
            "chown",
            "chown32",
            "close",
            "close_range",
            "creat",
            "dup",
            "dup2",
            "dup3",
            "faccessat",
            "faccessat2",
            "fadvise64",
            "fadvise64_64",
            "fallocate",
            "fchdir",
            "fchmod",
            "fchmodat",
            "fchmodat2",
            "fchown",
            "fchown32",
            "fchownat",
            "fcntl",
            "fcntl64",
            "fdatasync",
            "flock",
            "fstat",
            "fstat64",
            "fstatat64",
            "fstatfs",
            "fstatfs64",
            "fsync",
            "ftruncate",
            "ftruncate64",
            "futimesat",
            "getcwd",
            "getdents",
            "getdents64",
            "lchown",
            "lchown32",
            "link",
            "linkat",
            "_llseek",
            "lseek",
            "lstat",
            "lstat64",
            "mkdir",
            "mkdirat",
            "mknod",
            "mknodat",
            "newfstatat",
            "open",
            "openat",
            "openat2",
            "pread64",
            "preadv",
            "preadv2",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "read",
            "readahead",
            "readlink",
            "readlinkat",
            "readv",
            "rename",
            "renameat",
            "renameat2",
            "rmdir",
            "stat",
            "stat64",
            "statfs",
            "statfs64",
            "statx",
            "symlink",
            "symlinkat",
            "sync",
            "sync_file_range",
            "syncfs",
            "truncate",
            "truncate64",
            "umask",
            "unlink",
            "unlinkat",
            "utime",
            "utimensat",
            "utimensat_time64",
            "utimes",
            "write",
            "writev",
            "copy_file_range",
            "sendfile",
            "sendfile64",
            "splice",
            "tee",
            "vmsplice",
            "ioctl",
        ],
    ),
    (
        "extended attributes: per-file metadata, checked by the kernel per namespace",
        &[
            "fgetxattr",
            "flistxattr",
            "fremovexattr",
            "fsetxattr",
            "getxattr",
            "lgetxattr",
            "listxattr",
            "llistxattr",
            "lremovexattr",
            "lsetxattr",
            "removexattr",
            "setxattr",
        ],
    ),
    (
        "waiting on files and events: epoll, poll, select, inotify, eventfd, timerfd, signalfd",
        &[
            "epoll_create",
            "epoll_create1",
            "epoll_ctl",
            "epoll_ctl_old",
            "epoll_pwait",
            "epoll_pwait2",
            "epoll_wait",
            "epoll_wait_old",
            "eventfd",
            "eventfd2",
            "inotify_add_watch",
            "inotify_init",
            "inotify_init1",
            "inotify_rm_watch",
            "poll",
            "ppoll",
            "ppoll_time64",
            "pselect6",
            "pselect6_time64",
            "select",
            "_newselect",
            "signalfd",
            "signalfd4",
            "timerfd_create",
            "timerfd_gettime",
            "timerfd_gettime64",
            "timerfd_settime",
            "timerfd_settime64",
            "pipe",
            "pipe2",
            "memfd_create",
        ],
    ),
    (
        "asynchronous I/O (the old AIO interface; io_uring is not here, see BLOCKED)",
        &[
            "io_cancel",
            "io_destroy",
            "io_getevents",
            "io_pgetevents",
            "io_pgetevents_time64",
            "io_setup",
            "io_submit",
        ],
    ),
    (
        "memory: the process's own address space, limited by its cgroup",
        &[
            "brk",
            "madvise",
            "membarrier",
            "mincore",
            "mlock",
            "mlock2",
            "mlockall",
            "mmap",
            "mmap2",
            "mprotect",
            "mremap",
            "msync",
            "munlock",
            "munlockall",
            "munmap",
            "pkey_alloc",
            "pkey_free",
            "pkey_mprotect",
            "remap_file_pages",
        ],
    ),
    (
        "processes and threads: fork without new namespaces (clone is filtered by flags \
         below), exec, wait, exit, ids, limits, scheduling of its own tasks",
        &[
            "arch_prctl",
            "capget",
            "capset",
            "execve",
            "execveat",
            "exit",
            "exit_group",
            "fork",
            "vfork",
            "get_robust_list",
            "set_robust_list",
            "get_thread_area",
            "set_thread_area",
            "set_tid_address",
            "getcpu",
            "getegid",
            "getegid32",
            "geteuid",
            "geteuid32",
            "getgid",
            "getgid32",
            "getgroups",
            "getgroups32",
            "getpgid",
            "getpgrp",
            "getpid",
            "getppid",
            "getpriority",
            "getresgid",
            "getresgid32",
            "getresuid",
            "getresuid32",
            "getrlimit",
            "ugetrlimit",
            "getrusage",
            "getsid",
            "gettid",
            "getuid",
            "getuid32",
            "ioprio_get",
            "ioprio_set",
            "prctl",
            "prlimit64",
            "rseq",
            "sched_get_priority_max",
            "sched_get_priority_min",
            "sched_getaffinity",
            "sched_getattr",
            "sched_getparam",
            "sched_getscheduler",
            "sched_rr_get_interval",
            "sched_rr_get_interval_time64",
            "sched_setaffinity",
            "sched_setattr",
            "sched_setparam",
            "sched_setscheduler",
            "sched_yield",
            "setfsgid",
            "setfsgid32",
            "setfsuid",
            "setfsuid32",
            "setgid",
            "setgid32",
            "setgroups",
            "setgroups32",
            "setpgid",
            "setpriority",
            "setregid",
            "setregid32",
            "setresgid",
            "setresgid32",
            "setresuid",
            "setresuid32",
            "setreuid",
            "setreuid32",
            "setrlimit",
            "setsid",
            "setuid",
            "setuid32",
            "times",
            "uname",
            "olduname",
            "oldolduname",
            "sysinfo",
            "wait4",
            "waitid",
            "waitpid",
            "pidfd_open",
            "pidfd_send_signal",
            "process_mrelease",
            // Since Linux 4.8 a traced process cannot use ptrace to get past its seccomp
            // filter, and ptrace only reaches processes of the container's PID namespace
            // that the kernel's own checks allow (strace and gdb work as in Docker).
            "ptrace",
            // Adding a stricter filter of one's own is always allowed.
            "seccomp",
            "landlock_add_rule",
            "landlock_create_ruleset",
            "landlock_restrict_self",
            "futex",
            "futex_time64",
            "futex_waitv",
            "set_mempolicy_home_node",
            "restart_syscall",
            "modify_ldt",
        ],
    ),
    (
        "signals: only reach processes the container can see (its PID namespace)",
        &[
            "kill",
            "tkill",
            "tgkill",
            "pause",
            "rt_sigaction",
            "rt_sigpending",
            "rt_sigprocmask",
            "rt_sigqueueinfo",
            "rt_sigreturn",
            "rt_sigsuspend",
            "rt_sigtimedwait",
            "rt_sigtimedwait_time64",
            "rt_tgsigqueueinfo",
            "sigaction",
            "sigaltstack",
            "signal",
            "sigpending",
            "sigprocmask",
            "sigreturn",
            "sigsuspend",
        ],
    ),
    (
        "reading clocks and sleeping; adjtimex only changes the clock with CAP_SYS_TIME",
        &[
            "adjtimex",
            "alarm",
            "clock_getres",
            "clock_getres_time64",
            "clock_gettime",
            "clock_gettime64",
            "clock_nanosleep",
            "clock_nanosleep_time64",
            "getitimer",
            "gettimeofday",
            "nanosleep",
            "setitimer",
            "time",
            "timer_create",
            "timer_delete",
            "timer_getoverrun",
            "timer_gettime",
            "timer_gettime64",
            "timer_settime",
            "timer_settime64",
            "getrandom",
        ],
    ),
    (
        "sockets: the pod's own network namespace",
        &[
            "accept",
            "accept4",
            "bind",
            "connect",
            "getpeername",
            "getsockname",
            "getsockopt",
            "listen",
            "recv",
            "recvfrom",
            "recvmmsg",
            "recvmmsg_time64",
            "recvmsg",
            "send",
            "sendmmsg",
            "sendmsg",
            "sendto",
            "setsockopt",
            "shutdown",
            "socket",
            "socketcall",
            "socketpair",
        ],
    ),
    (
        "System V and POSIX IPC: the container's own IPC namespace",
        &[
            "ipc",
            "mq_getsetattr",
            "mq_notify",
            "mq_open",
            "mq_timedreceive",
            "mq_timedreceive_time64",
            "mq_timedsend",
            "mq_timedsend_time64",
            "mq_unlink",
            "msgctl",
            "msgget",
            "msgrcv",
            "msgsnd",
            "semctl",
            "semget",
            "semop",
            "semtimedop",
            "semtimedop_time64",
            "shmat",
            "shmctl",
            "shmdt",
            "shmget",
        ],
    ),
    (
        "32-bit ARM helpers glibc calls on arm",
        &[
            "breakpoint",
            "cacheflush",
            "set_tls",
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
        ],
    ),
];

/// Not in [`ALLOWED`], so they fail with EPERM (clone3 with ENOSYS), unless the
/// container holds the capability that [`CAPABILITY_GATED`] lists for them.
/// One line per call: why a container should not make it.
pub const BLOCKED: &[(&str, &str)] = &[
    ("acct", "switches process accounting for the whole host (CAP_SYS_PACCT)"),
    ("add_key", "kernel keyrings are not namespaced: keys would be shared with the host"),
    ("keyctl", "kernel keyrings are not namespaced"),
    ("request_key", "kernel keyrings are not namespaced"),
    ("bpf", "loads programs into the kernel; large attack surface (CAP_SYS_ADMIN/CAP_BPF)"),
    ("clock_adjtime", "changes the host's clock, which is not namespaced (CAP_SYS_TIME)"),
    ("clock_settime", "changes the host's clock (CAP_SYS_TIME)"),
    ("clock_settime64", "changes the host's clock (CAP_SYS_TIME)"),
    ("settimeofday", "changes the host's clock (CAP_SYS_TIME)"),
    ("stime", "changes the host's clock (CAP_SYS_TIME)"),
    ("clone3", "its flags sit in memory a filter cannot read: ENOSYS makes libc fall back to clone, whose flags are checked"),
    ("create_module", "kernel modules (CAP_SYS_MODULE); obsolete"),
    ("init_module", "loads a kernel module into the host (CAP_SYS_MODULE)"),
    ("finit_module", "loads a kernel module into the host (CAP_SYS_MODULE)"),
    ("delete_module", "unloads a host kernel module (CAP_SYS_MODULE)"),
    ("get_kernel_syms", "kernel module symbols; obsolete"),
    ("query_module", "kernel modules; obsolete"),
    ("kexec_load", "replaces the running kernel (CAP_SYS_BOOT)"),
    ("kexec_file_load", "replaces the running kernel (CAP_SYS_BOOT)"),
    ("reboot", "reboots the host or changes Ctrl-Alt-Del (CAP_SYS_BOOT)"),
    ("mount", "mounts can reveal or shadow host paths (CAP_SYS_ADMIN)"),
    ("umount", "unmounting can expose what a mount hides (CAP_SYS_ADMIN)"),
    ("umount2", "unmounting can expose what a mount hides (CAP_SYS_ADMIN)"),
    ("pivot_root", "changes the root of the mount namespace (CAP_SYS_ADMIN)"),
    ("fsopen", "new mount API (CAP_SYS_ADMIN)"),
    ("fsconfig", "new mount API (CAP_SYS_ADMIN)"),
    ("fsmount", "new mount API (CAP_SYS_ADMIN)"),
    ("fspick", "new mount API (CAP_SYS_ADMIN)"),
    ("move_mount", "new mount API (CAP_SYS_ADMIN)"),
    ("open_tree", "new mount API (CAP_SYS_ADMIN)"),
    ("mount_setattr", "new mount API (CAP_SYS_ADMIN)"),
    ("chroot", "a second root inside the container helps escape tricks (CAP_SYS_CHROOT)"),
    ("swapon", "host swap (CAP_SYS_ADMIN)"),
    ("swapoff", "host swap (CAP_SYS_ADMIN)"),
    ("unshare", "new namespaces (a user namespace above all) widen the kernel surface (CAP_SYS_ADMIN)"),
    ("setns", "joins other namespaces (CAP_SYS_ADMIN)"),
    ("sethostname", "the UTS namespace is the pod's, set by the runtime (CAP_SYS_ADMIN)"),
    ("setdomainname", "the UTS namespace is the pod's, set by the runtime (CAP_SYS_ADMIN)"),
    ("quotactl", "disk quotas of host filesystems (CAP_SYS_ADMIN)"),
    ("quotactl_fd", "disk quotas of host filesystems (CAP_SYS_ADMIN)"),
    ("open_by_handle_at", "opens files by handle, past the mount namespace: the 'shocker' escape (CAP_DAC_READ_SEARCH)"),
    ("name_to_handle_at", "companion of open_by_handle_at"),
    ("perf_event_open", "performance counters leak host information (CAP_SYS_ADMIN/CAP_PERFMON)"),
    ("lookup_dcookie", "profiling (CAP_SYS_ADMIN)"),
    ("fanotify_init", "watches whole filesystems (CAP_SYS_ADMIN)"),
    ("fanotify_mark", "watches whole filesystems (CAP_SYS_ADMIN)"),
    ("userfaultfd", "lets a process stall the kernel on a page fault, a staple of kernel exploits"),
    ("process_vm_readv", "reads another process's memory (CAP_SYS_PTRACE)"),
    ("process_vm_writev", "writes another process's memory (CAP_SYS_PTRACE)"),
    ("process_madvise", "acts on another process's memory (CAP_SYS_PTRACE)"),
    ("kcmp", "compares kernel objects of other processes (CAP_SYS_PTRACE)"),
    ("pidfd_getfd", "takes a file descriptor from another process (CAP_SYS_PTRACE)"),
    ("personality", "only the values in PERSONALITY_ALLOWED: others weaken ASLR"),
    ("syslog", "the host kernel log (CAP_SYS_ADMIN/CAP_SYSLOG)"),
    ("_sysctl", "obsolete; sysctls go through /proc/sys"),
    ("sysfs", "obsolete"),
    ("ustat", "obsolete"),
    ("uselib", "obsolete a.out loader"),
    ("nfsservctl", "removed from the kernel"),
    ("vm86", "x86 virtual 8086 mode"),
    ("vm86old", "x86 virtual 8086 mode"),
    ("iopl", "raw I/O port access (CAP_SYS_RAWIO)"),
    ("ioperm", "raw I/O port access (CAP_SYS_RAWIO)"),
    ("vhangup", "hangs up the terminal (CAP_SYS_TTY_CONFIG)"),
    ("mbind", "NUMA policy can hurt other workloads (CAP_SYS_NICE)"),
    ("set_mempolicy", "NUMA policy (CAP_SYS_NICE)"),
    ("get_mempolicy", "NUMA policy (CAP_SYS_NICE)"),
    ("migrate_pages", "moves other processes' pages (CAP_SYS_NICE)"),
    ("move_pages", "moves other processes' pages (CAP_SYS_NICE)"),
    ("io_uring_setup", "io_uring bypasses seccomp for the calls it runs and has had many kernel exploits"),
    ("io_uring_enter", "io_uring"),
    ("io_uring_register", "io_uring"),
    ("memfd_secret", "secret memory the kernel cannot reach; not needed by containers"),
    ("afs_syscall", "unimplemented"),
    ("getpmsg", "unimplemented"),
    ("putpmsg", "unimplemented"),
    ("security", "unimplemented"),
    ("tuxcall", "unimplemented"),
    ("vserver", "unimplemented"),
];

/// Calls allowed after all when the container's effective set holds the capability (the
/// kernel checks that capability for them anyway; the filter adds nothing then).
pub const CAPABILITY_GATED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fanotify_mark",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "swapoff",
            "swapon",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "clock_adjtime",
            "clock_settime",
            "clock_settime64",
            "settimeofday",
            "stime",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "migrate_pages",
            "move_pages",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    (
        "CAP_DAC_READ_SEARCH",
        &["open_by_handle_at", "name_to_handle_at"],
    ),
];

/// The filter covers the native ABI and the ones the same CPU also runs (32-bit x86 and
/// x32 on x86_64, 32-bit ARM on aarch64), so a 32-bit binary meets the same rules rather
/// than being killed for an unknown architecture.
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

fn rule(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<(usize, u64, Option<u64>, LinuxSeccompOperator)>,
) -> Result<LinuxSyscall, SeccompError> {
    let build = |e: oci_spec::OciSpecError| SeccompError::Build(e.to_string());
    let mut b = LinuxSyscallBuilder::default().names(names).action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        let mut out = Vec::new();
        for (index, value, value_two, op) in args {
            let mut a = LinuxSeccompArgBuilder::default()
                .index(index)
                .value(value)
                .op(op);
            if let Some(v2) = value_two {
                a = a.value_two(v2);
            }
            out.push(a.build().map_err(build)?);
        }
        b = b.args(out);
    }
    b.build().map_err(build)
}

/// kith's RuntimeDefault profile for a container whose effective capabilities are
/// `capabilities` (`CAP_*` names).
pub fn default_profile(capabilities: &[String]) -> Result<LinuxSeccomp, SeccompError> {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut allowed: Vec<String> = ALLOWED
        .iter()
        .flat_map(|(_, names)| names.iter())
        .map(|s| s.to_string())
        .collect();
    for (cap, names) in CAPABILITY_GATED {
        if has(cap) {
            allowed.extend(names.iter().map(|s| s.to_string()));
        }
    }
    allowed.sort();
    allowed.dedup();
    let sys_admin = has("CAP_SYS_ADMIN");

    let allow = LinuxSeccompAction::ScmpActAllow;
    let errno = LinuxSeccompAction::ScmpActErrno;
    let mut syscalls = vec![rule(allowed, allow, None, vec![])?];
    if !sys_admin {
        // clone(flags, ...): allowed when no namespace flag is set. The flags are the
        // first argument on x86_64 and aarch64 (s390 swaps them; not a kith target).
        syscalls.push(rule(
            vec!["clone".into()],
            allow,
            None,
            vec![(
                0,
                0,
                Some(CLONE_NAMESPACE_FLAGS),
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
        )?);
        syscalls.push(rule(vec!["clone3".into()], errno, Some(ENOSYS), vec![])?);
    }
    // One rule per value: rules for the same call are alternatives.
    for value in PERSONALITY_ALLOWED {
        syscalls.push(rule(
            vec!["personality".into()],
            allow,
            None,
            vec![(0, *value, None, LinuxSeccompOperator::ScmpCmpEq)],
        )?);
    }
    LinuxSeccompBuilder::default()
        .default_action(errno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(|e| SeccompError::Build(e.to_string()))
}

#[cfg(test)]
mod tests;
