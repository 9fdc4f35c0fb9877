//! A recording [`ImageStore`] for sync-loop tests: images "in the registry" are declared
//! up front, failures are scripted per image, every call is recorded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use super::reference::parse;
use super::{
    GcReport, ImageConfig, ImageError, ImageStore, PullPolicy, PulledImage, RegistryCredential,
};

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `ensure(image, policy, creds)`; `pulled` tells whether it went to the "registry".
    Ensure {
        image: String,
        policy: PullPolicy,
        registries_with_creds: Vec<String>,
        pulled: bool,
    },
    CollectGarbage {
        in_use: Vec<String>,
        bytes_to_free: u64,
    },
}

#[derive(Default)]
struct State {
    /// Normalised name → config, as the registry has it.
    registry: HashMap<String, ImageConfig>,
    /// Normalised names stored locally.
    present: HashSet<String>,
    failures: HashMap<String, VecDeque<ImageError>>,
    calls: Vec<FakeCall>,
}

/// Recording fake of [`ImageStore`]. Rootfs paths point under `rootfs_base` (the fake
/// creates nothing there).
pub struct FakeImageStore {
    rootfs_base: PathBuf,
    state: Mutex<State>,
}

impl FakeImageStore {
    pub fn new(rootfs_base: impl Into<PathBuf>) -> FakeImageStore {
        FakeImageStore {
            rootfs_base: rootfs_base.into(),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `image` pullable with `config`.
    pub fn add_remote(&self, image: &str, config: ImageConfig) -> &Self {
        let name = parse(image).expect("valid image name").whole();
        self.state().registry.insert(name, config);
        self
    }

    /// Makes `image` pullable and already stored locally.
    pub fn add_present(&self, image: &str, config: ImageConfig) -> &Self {
        let name = parse(image).expect("valid image name").whole();
        let mut state = self.state();
        state.registry.insert(name.clone(), config);
        state.present.insert(name);
        self
    }

    /// The next `ensure` of `image` that would pull fails with `error` (queued in order).
    pub fn fail_next_pull(&self, image: &str, error: ImageError) -> &Self {
        let name = parse(image).expect("valid image name").whole();
        self.state()
            .failures
            .entry(name)
            .or_default()
            .push_back(error);
        self
    }

    /// Calls so far.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.state().calls.clone()
    }

    /// What a stored image looks like (deterministic ids from the name).
    pub fn pulled_image(&self, name: &str, config: ImageConfig) -> PulledImage {
        use sha2::Digest;
        let config_hex = hex::encode(sha2::Sha256::digest(format!("config of {name}").as_bytes()));
        let manifest_hex = hex::encode(sha2::Sha256::digest(
            format!("manifest of {name}").as_bytes(),
        ));
        let repo = name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(name, |(r, _)| r);
        PulledImage {
            reference: name.to_string(),
            image_id: format!("sha256:{config_hex}"),
            repo_digest: format!("{repo}@sha256:{manifest_hex}"),
            config,
            rootfs: self.rootfs_base.join(config_hex),
            size_bytes: 1 << 20,
        }
    }

    fn ensure_now(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> Result<PulledImage, ImageError> {
        let name = parse(image)?.whole();
        let mut state = self.state();
        let present = state.present.contains(&name);
        let pulled = match policy {
            PullPolicy::Never => false,
            PullPolicy::IfNotPresent => !present,
            PullPolicy::Always => true,
        };
        state.calls.push(FakeCall::Ensure {
            image: image.to_string(),
            policy,
            registries_with_creds: creds.iter().map(|c| c.registry.clone()).collect(),
            pulled,
        });
        if policy == PullPolicy::Never && !present {
            return Err(ImageError::NeverPull {
                image: image.to_string(),
            });
        }
        if pulled {
            if let Some(error) = state.failures.get_mut(&name).and_then(VecDeque::pop_front) {
                return Err(error);
            }
        }
        let Some(config) = state.registry.get(&name).cloned() else {
            return Err(ImageError::Pull {
                image: image.to_string(),
                message: "manifest unknown".into(),
            });
        };
        state.present.insert(name.clone());
        drop(state);
        Ok(self.pulled_image(&name, config))
    }
}

impl ImageStore for FakeImageStore {
    fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &[RegistryCredential],
    ) -> impl std::future::Future<Output = Result<PulledImage, ImageError>> + Send {
        let result = self.ensure_now(image, policy, creds);
        async move { result }
    }

    fn collect_garbage(
        &self,
        in_use: &[String],
        bytes_to_free: u64,
    ) -> impl std::future::Future<Output = Result<GcReport, ImageError>> + Send {
        let mut state = self.state();
        state.calls.push(FakeCall::CollectGarbage {
            in_use: in_use.to_vec(),
            bytes_to_free,
        });
        let mut report = GcReport::default();
        let names: Vec<String> = state.present.iter().cloned().collect();
        let mut names = names;
        names.sort();
        for name in names {
            if report.freed_bytes >= bytes_to_free {
                break;
            }
            let config = state.registry.get(&name).cloned().unwrap_or_default();
            let image = self.pulled_image(&name, config);
            if in_use.contains(&image.image_id) {
                continue;
            }
            state.present.remove(&name);
            report.freed_bytes += image.size_bytes;
            report.removed_images.push(image.image_id);
        }
        async move { Ok(report) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fake_follows_policies_and_scripts() {
        let fake = FakeImageStore::new("/fake/rootfs");
        fake.add_remote(
            "busybox:1",
            ImageConfig {
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            },
        );
        fake.fail_next_pull(
            "busybox:1",
            ImageError::Pull {
                image: "busybox:1".into(),
                message: "unauthorized".into(),
            },
        );

        let never = fake
            .ensure("busybox:1", PullPolicy::Never, &[])
            .await
            .unwrap_err();
        assert_eq!(never.reason(), "ErrImageNeverPull");
        let first = fake
            .ensure("busybox:1", PullPolicy::IfNotPresent, &[])
            .await
            .unwrap_err();
        assert!(first.to_string().contains("unauthorized"), "{first}");
        let second = fake
            .ensure("docker.io/library/busybox:1", PullPolicy::IfNotPresent, &[])
            .await
            .unwrap();
        assert_eq!(second.reference, "docker.io/library/busybox:1");
        assert_eq!(second.config.cmd, Some(vec!["sh".to_string()]));
        assert!(second.rootfs.starts_with("/fake/rootfs"));
        fake.ensure("busybox:1", PullPolicy::Never, &[])
            .await
            .unwrap();
        let missing = fake
            .ensure("nothere", PullPolicy::Always, &[])
            .await
            .unwrap_err();
        assert!(
            missing.to_string().contains("manifest unknown"),
            "{missing}"
        );
        let bad = fake
            .ensure("Bad Name", PullPolicy::Always, &[])
            .await
            .unwrap_err();
        assert_eq!(bad.reason(), "InvalidImageName");

        let pulled: Vec<(PullPolicy, bool)> = fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                FakeCall::Ensure { policy, pulled, .. } => Some((policy, pulled)),
                FakeCall::CollectGarbage { .. } => None,
            })
            .collect();
        assert_eq!(
            pulled,
            vec![
                (PullPolicy::Never, false),
                (PullPolicy::IfNotPresent, true),
                (PullPolicy::IfNotPresent, true),
                (PullPolicy::Never, false),
                (PullPolicy::Always, true),
            ]
        );

        let report = fake
            .collect_garbage(std::slice::from_ref(&second.image_id), u64::MAX)
            .await
            .unwrap();
        assert!(report.removed_images.is_empty());
        let report = fake.collect_garbage(&[], u64::MAX).await.unwrap();
        assert_eq!(report.removed_images, vec![second.image_id]);
        let gone = fake
            .ensure("busybox:1", PullPolicy::Never, &[])
            .await
            .unwrap_err();
        assert_eq!(gone.reason(), "ErrImageNeverPull");
    }
}
