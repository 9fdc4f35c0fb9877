//! Image garbage collection when the disk runs short, as the kubelet's image GC manager
//! does it: when the filesystem holding the images is used above a high threshold (85%),
//! remove images no container uses, least recently used first, until usage is back under
//! the low threshold (80%). Images used within a minimum age are kept by the store (see
//! `RegistryImageStore::set_image_min_age`), so an image just pulled for a container about
//! to start is not taken from under it.
//!
//! ```text
//!  every period ─▶ DiskUsage::usage (statvfs of the image dir)
//!                    └▶ bytes_to_free(usage, policy) ── None ─▶ nothing to do
//!                         └ Some(n) ─▶ in use = images of the runtime's containers
//!                                     └▶ ImageStore::collect_garbage(in use, n)
//!                                          └ freed < n ─▶ Warning FreeDiskSpaceFailed
//! ```
//! The decisions ([`bytes_to_free`], [`in_use`]) are pure; the disk is behind
//! [`DiskUsage`] so the loop can be tested against a small real filesystem.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{GcReport, ImageError, ImageStore};
use crate::runtime::ContainerStatus;

/// When and how much to collect. Defaults are the kubelet's (`imageGCHighThresholdPercent`,
/// `imageGCLowThresholdPercent`); the period is shorter than its 5 minutes, since a small
/// edge disk fills quickly and a `statvfs` costs nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    pub high_percent: u64,
    pub low_percent: u64,
    pub period: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            period: Duration::from_secs(30),
        }
    }
}

impl GcPolicy {
    /// Checks the thresholds as the kubelet does: low < high ≤ 100.
    pub fn new(high_percent: u64, low_percent: u64, period: Duration) -> Result<GcPolicy, String> {
        if high_percent > 100 || low_percent >= high_percent {
            return Err(format!(
                "image GC thresholds must satisfy low < high <= 100 (got low {low_percent}, high {high_percent})"
            ));
        }
        Ok(GcPolicy {
            high_percent,
            low_percent,
            period,
        })
    }
}

/// Size and free space of a filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub capacity: u64,
    pub available: u64,
}

/// How many bytes to free so usage falls to the low threshold, when it has reached the
/// high one; `None` otherwise.
pub fn bytes_to_free(usage: Usage, policy: &GcPolicy) -> Option<u64> {
    if usage.capacity == 0 {
        return None;
    }
    let used = usage.capacity.saturating_sub(usage.available);
    // u128: capacity × 100 overflows u64 only for exabyte disks, but costs nothing.
    let used_percent = (used as u128 * 100 / usage.capacity as u128) as u64;
    if used_percent < policy.high_percent {
        return None;
    }
    let target_available =
        (usage.capacity as u128 * (100 - policy.low_percent) as u128 / 100) as u64;
    Some(target_available.saturating_sub(usage.available)).filter(|n| *n > 0)
}

/// The image ids the runtime's containers use (running or kept after exiting, whose logs
/// and `--previous` still need them): each container's image rootfs is named after its
/// image id.
pub fn in_use(containers: &[ContainerStatus]) -> Vec<String> {
    let mut ids: Vec<String> = containers
        .iter()
        .filter_map(|c| c.image_rootfs.file_name()?.to_str())
        .map(|hex| format!("sha256:{hex}"))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Where free space is measured.
pub trait DiskUsage: Send + Sync {
    fn usage(&self) -> Result<Usage, ImageError>;
}

/// `statvfs` of the filesystem holding a directory (space available to unprivileged
/// users, as `df` shows it).
pub struct Statvfs(pub PathBuf);

impl DiskUsage for Statvfs {
    fn usage(&self) -> Result<Usage, ImageError> {
        usage_of(&self.0).map_err(ImageError::store("measuring", &self.0))
    }
}

fn usage_of(path: &Path) -> io::Result<Usage> {
    let fs = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let block = fs.fragment_size() as u64;
    Ok(Usage {
        capacity: fs.blocks() as u64 * block,
        available: fs.blocks_available() as u64 * block,
    })
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Bytes the round set out to free.
    pub wanted: u64,
    pub report: GcReport,
}

impl Round {
    /// The kubelet's `FreeDiskSpaceFailed` message when not enough could be freed.
    pub fn shortfall(&self) -> Option<String> {
        (self.report.freed_bytes < self.wanted).then(|| {
            format!(
                "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                self.wanted, self.report.freed_bytes
            )
        })
    }
}

/// One round: measure, and collect when the disk is above the high threshold. `None`
/// when there was nothing to do.
pub async fn collect_if_short<S: ImageStore>(
    store: &S,
    disk: &dyn DiskUsage,
    in_use: &[String],
    policy: &GcPolicy,
) -> Result<Option<Round>, ImageError> {
    let usage = disk.usage()?;
    let Some(wanted) = bytes_to_free(usage, policy) else {
        return Ok(None);
    };
    tracing::info!(
        capacity = usage.capacity,
        available = usage.available,
        wanted,
        "disk usage over the image GC threshold: removing unused images"
    );
    let report = store.collect_garbage(in_use, wanted).await?;
    Ok(Some(Round { wanted, report }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerKey, ContainerState};

    const GIB: u64 = 1 << 30;

    #[test]
    fn bytes_to_free_table() {
        let p = GcPolicy::default();
        let cases = [
            // (capacity, available, want)
            (100 * GIB, 50 * GIB, None),          // 50% used
            (100 * GIB, 16 * GIB, None),          // 84% used: under the high mark
            (100 * GIB, 15 * GIB, Some(5 * GIB)), // 85%: back to 80% (20 GiB free)
            (100 * GIB, 0, Some(20 * GIB)),       // full
            (0, 0, None),                         // no filesystem size known
            (100 * GIB, 200 * GIB, None),         // nonsense readings free nothing
        ];
        for (capacity, available, want) in cases {
            assert_eq!(
                bytes_to_free(
                    Usage {
                        capacity,
                        available
                    },
                    &p
                ),
                want,
                "{capacity} {available}"
            );
        }
        let strict = GcPolicy::new(50, 10, p.period).unwrap();
        assert_eq!(
            bytes_to_free(
                Usage {
                    capacity: 1000,
                    available: 500
                },
                &strict
            ),
            Some(400)
        );
    }

    #[test]
    fn thresholds_are_checked() {
        let d = Duration::from_secs(1);
        assert!(GcPolicy::new(85, 80, d).is_ok());
        assert!(GcPolicy::new(80, 80, d).is_err());
        assert!(GcPolicy::new(101, 80, d).is_err());
        assert!(GcPolicy::new(50, 60, d).is_err());
    }

    #[test]
    fn in_use_names_the_images_of_containers_once() {
        let c = |rootfs: &str, attempt| ContainerStatus {
            key: ContainerKey {
                pod_uid: "u".into(),
                container: "c".into(),
                attempt,
            },
            state: ContainerState::Created,
            image_rootfs: PathBuf::from(rootfs),
            log_path: PathBuf::from("/l"),
        };
        assert_eq!(
            in_use(&[
                c("/images/rootfs/bb", 0),
                c("/images/rootfs/aa", 0),
                c("/images/rootfs/bb", 1),
            ]),
            vec!["sha256:aa".to_string(), "sha256:bb".to_string()]
        );
    }

    #[test]
    fn shortfall_message_is_the_kubelets() {
        let round = Round {
            wanted: 100,
            report: GcReport {
                removed_images: vec![],
                freed_bytes: 40,
            },
        };
        assert_eq!(
            round.shortfall().unwrap(),
            "Failed to garbage collect required amount of images. Attempted to free 100 bytes, but only found 40 bytes eligible to free."
        );
        let enough = Round {
            wanted: 100,
            report: GcReport {
                removed_images: vec![],
                freed_bytes: 100,
            },
        };
        assert_eq!(enough.shortfall(), None);
    }
}
