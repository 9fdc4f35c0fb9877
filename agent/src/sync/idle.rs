//! Handing the heap a burst of pod work freed back to the kernel once the sync loop goes
//! quiet.
//!
//! On top of the structural fixes (no regex kept, idle connections closed, fewer blocking
//! threads), glibc still keeps what a burst freed inside its arenas: with 20 pods started
//! at once the agent held 5.6 MB of heap for 1.8 MB in use, and `malloc_trim(0)` took its
//! resident memory down by 1.4 MiB (measured with gdb on the release agent). So after a
//! pass that acted, the loop waits for [`QUIET_PASSES`] passes with nothing to do and then
//! trims once; a steady box does not trim at all. The agent's process also runs with
//! glibc settings that keep less memory aside ([`AGENT_TUNABLES`]).

/// Sync passes with no action or status write before trimming (the loop ticks every
/// second, and sooner when something changes).
pub const QUIET_PASSES: u32 = 2;

/// Whether the heap is due a trim; fed once per sync pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Idle {
    /// Some pod task acted since the last trim.
    pending: bool,
    quiet: u32,
}

impl Idle {
    /// After one pass: `acted` if any pod task acted or wrote a status since the previous
    /// pass. True when the heap should be trimmed now.
    pub fn pass(&mut self, acted: bool) -> bool {
        if acted {
            self.pending = true;
            self.quiet = 0;
            return false;
        }
        if !self.pending {
            return false;
        }
        self.quiet += 1;
        if self.quiet < QUIET_PASSES {
            return false;
        }
        self.pending = false;
        self.quiet = 0;
        true
    }
}

/// Returns free memory at the top of glibc's arenas (and whole free pages inside them) to
/// the kernel. True if some memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointers; it walks glibc's own arenas under their locks
    // and may be called from any thread at any time.
    unsafe { nix::libc::malloc_trim(0) == 1 }
}

/// Other allocators give memory back on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() -> bool {
    false
}

/// The glibc allocator settings `kith agent` runs with (`GLIBC_TUNABLES`), read by glibc
/// when a process starts:
/// - one malloc arena for all threads (glibc's default is up to 8 per core, one per thread
///   that allocates): the agent's heap is small (~1 MB live with 20 pods) and its threads
///   mostly wait, so per-thread arenas cost more memory than the contention they save
///   (22.34 instead of 23.09 MiB with 5 pods, kith-agent-bench --quick, side by side);
/// - no per-thread cache of freed chunks (tcache): each thread that allocated keeps up to 7
///   freed chunks per size class, which [`trim_heap`] cannot hand back; after a burst the
///   agent's dozen threads held ~1.2 MiB that way. With 20 pods: 23.02 instead of
///   24.25 MiB (kith-agent-bench, release, same binary, one run each).
///
/// The shims and other helpers the agent starts inherit them (a container's process does
/// not: its environment is the pod's).
pub const AGENT_TUNABLES: &[(&str, &str)] = &[
    ("glibc.malloc.arena_max", "1"),
    ("glibc.malloc.tcache_count", "0"),
];

/// The `GLIBC_TUNABLES` value that adds `wanted` to `current` (`name=value` pairs joined by
/// `:`), or `None` when `current` names them all already. A tunable already set keeps its
/// value: whoever set it meant it.
pub fn tunables_with(current: Option<&str>, wanted: &[(&str, &str)]) -> Option<String> {
    let current = current.unwrap_or("");
    let set: Vec<&str> = current
        .split(':')
        .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(name, _)| !set.contains(name))
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut all: Vec<&str> = current.split(':').filter(|p| !p.is_empty()).collect();
    all.extend(missing.iter().map(String::as_str));
    Some(all.join(":"))
}

/// Makes this process run with [`AGENT_TUNABLES`]: glibc reads its tunables only at
/// start, so unless the environment has them already, the process executes itself again
/// (same binary, same arguments, same PID) with them added. Call it before any thread
/// starts. Returns when there is nothing to do; an error when the new image could not be
/// executed (the process then goes on with glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn run_with_agent_tunables() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    const VAR: &str = "GLIBC_TUNABLES";
    let current = std::env::var(VAR).ok();
    let Some(value) = tunables_with(current.as_deref(), AGENT_TUNABLES) else {
        return Ok(());
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // /proc/self/exe: the very binary running now, whatever argv[0] says.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(VAR, value)
        .exec();
    Err(err)
}

/// Other allocators have no glibc tunables.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn run_with_agent_tunables() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_quiet_passes_that_follow_work() {
        // (acted in this pass, trim now)
        let cases: &[(&str, &[(bool, bool)])] = &[
            (
                "a steady box never trims",
                &[(false, false), (false, false), (false, false)],
            ),
            (
                "work, then two quiet passes: one trim",
                &[
                    (true, false),
                    (false, false),
                    (false, true),
                    (false, false),
                    (false, false),
                ],
            ),
            (
                "work resumes before the loop is quiet: the count starts over",
                &[
                    (true, false),
                    (false, false),
                    (true, false),
                    (false, false),
                    (false, true),
                ],
            ),
            (
                "a second burst trims again",
                &[
                    (true, false),
                    (false, false),
                    (false, true),
                    (true, false),
                    (false, false),
                    (false, true),
                ],
            ),
        ];
        for (name, passes) in cases {
            let mut idle = Idle::default();
            for (i, (acted, want)) in passes.iter().enumerate() {
                assert_eq!(idle.pass(*acted), *want, "{name}: pass {i}");
            }
        }
    }

    #[test]
    fn tunables_are_added_once_and_never_override() {
        let wanted = AGENT_TUNABLES;
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (
                None,
                Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0"),
            ),
            (
                Some(""),
                Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0"),
            ),
            // After the re-exec: nothing more to do, so no second exec.
            (
                Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0"),
                None,
            ),
            // The operator's own settings stay, theirs win for the same name.
            (
                Some("glibc.malloc.check=3"),
                Some("glibc.malloc.check=3:glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0"),
            ),
            (
                Some("glibc.malloc.tcache_count=7"),
                Some("glibc.malloc.tcache_count=7:glibc.malloc.arena_max=1"),
            ),
            (
                Some("glibc.malloc.tcache_count=7:glibc.malloc.arena_max=4"),
                None,
            ),
            // A stray separator or a pair without a value does not hide a name.
            (
                Some(":glibc.malloc.arena_max=2:"),
                Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"),
            ),
        ];
        for (current, want) in cases {
            assert_eq!(
                tunables_with(*current, wanted).as_deref(),
                *want,
                "{current:?}"
            );
        }
    }
}
