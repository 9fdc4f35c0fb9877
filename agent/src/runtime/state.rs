//! The on-disk state of one container: the contract between the agent and its shim, and
//! what lets a new agent process re-adopt containers an earlier one started.
//!
//! ```text
//!  <state_dir>/containers/<pod_uid>_<container>_<attempt>/
//!     meta.json     written by the agent before the shim starts (key, image, log path)
//!     config.json   the OCI bundle's spec (root.path → ./rootfs)
//!     upper/ work/  overlay layers; rootfs/ is the overlay mount point
//!     lc/           libcontainer's own state (one root per container)
//!     pids.json     written by the shim once the container runs
//!     exit.json     written by the shim after reaping the container
//!     shim.log      the shim's stderr
//!     attach.sock   the shim's socket for attach clients (see [`super::attach`])
//! ```
//! Files are written to a temporary name then renamed, so a reader sees all or nothing.

use std::io;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{ContainerKey, ExitReason, StdinMode};

pub const META: &str = "meta.json";
pub const CONFIG: &str = "config.json";
pub const PIDS: &str = "pids.json";
pub const EXIT: &str = "exit.json";
pub const SHIM_LOG: &str = "shim.log";
pub const ROOTFS: &str = "rootfs";
pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
pub const LC_ROOT: &str = "lc";

/// What the agent records before starting the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub key: ContainerKey,
    pub image_rootfs: PathBuf,
    pub log_path: PathBuf,
    /// Rotate the log file once it grows beyond this many bytes.
    pub log_max_bytes: u64,
    /// The container's stdin (absent in state written before attach existed).
    #[serde(default)]
    pub stdin: StdinMode,
}

/// A process identity that survives pid reuse: the pid plus its start time in clock
/// ticks since boot (field 22 of /proc/<pid>/stat).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    pub start_ticks: u64,
}

/// What the shim records once the container process runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pids {
    pub shim: ProcId,
    pub container: ProcId,
    pub started_at: Timestamp,
}

/// What the shim records once the container is gone (or could not start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: ExitReason,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// `Ok(None)` when the file does not exist (yet).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// (state, start ticks) from the text of /proc/<pid>/stat. The command name may hold
/// spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_proc_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

/// This process's identity now, if it exists.
pub fn proc_id(pid: i32) -> Option<ProcId> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, start_ticks) = parse_proc_stat(&stat)?;
    Some(ProcId { pid, start_ticks })
}

/// Whether the recorded process still runs: same pid, same start time, not a zombie.
pub fn alive(p: &ProcId) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) else {
        return false;
    };
    matches!(parse_proc_stat(&stat), Some((state, start)) if start == p.start_ticks && state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields() {
        let cases = [
            (
                "1234 (sleep) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10",
                Some(('S', 98765)),
            ),
            (
                "99 (we ird) (x)) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 1",
                Some(('Z', 4242)),
            ),
            ("99 (short) R 1 2", None),
            ("garbage", None),
        ];
        for (stat, want) in cases {
            assert_eq!(parse_proc_stat(stat), want, "{stat}");
        }
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = proc_id(std::process::id() as i32).unwrap();
        assert!(alive(&me));
        assert!(!alive(&ProcId {
            start_ticks: me.start_ticks + 1,
            ..me
        }));
    }
}
