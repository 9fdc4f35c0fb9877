//! The real store against a real registry (Debian `docker-registry` on loopback).

use std::fs;
use std::path::Path;

use anyhow::Result;
use kith_agent::image::gc::{bytes_to_free, collect_if_short, DiskUsage, GcPolicy, Statvfs};
use kith_agent::image::testing::{raw_tar, ImageOptions, RawEntry, TestImage, TestRegistry};
use kith_agent::image::{ImageStore, PullPolicy, RegistryImageStore};

fn busybox_options() -> ImageOptions {
    ImageOptions {
        cmd: Some(vec!["sh".into()]),
        working_dir: Some("/tmp".into()),
        ..ImageOptions::default()
    }
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

#[tokio::test]
async fn pull_unpack_then_serve_from_store_without_network() -> Result<()> {
    let mut registry = TestRegistry::start()?;
    let digest = registry
        .push_busybox("kith/busybox", "v1", busybox_options())
        .await?;
    let expected = TestImage::busybox(busybox_options())?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;
    let image_name = registry.image("kith/busybox", "v1");

    let image = store
        .ensure(&image_name, PullPolicy::IfNotPresent, &[])
        .await?;
    assert_eq!(image.reference, image_name);
    assert_eq!(image.image_id, expected.image_id());
    assert_eq!(
        image.repo_digest,
        format!("{}/kith/busybox@{digest}", registry.address())
    );
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(image.config.working_dir.as_deref(), Some("/tmp"));
    assert!(image.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert!(image.rootfs.starts_with(dir.path()));
    assert!(fs::metadata(image.rootfs.join("bin/busybox"))?.is_file());
    for applet in ["sh", "echo", "sleep", "httpd"] {
        assert_eq!(
            fs::read_link(image.rootfs.join("bin").join(applet))?,
            Path::new("busybox"),
            "{applet}"
        );
    }
    assert!(fs::read_to_string(image.rootfs.join("etc/passwd"))?.contains("nobody:x:65534:65534"));
    assert!(image.size_bytes > fs::metadata("/bin/busybox")?.len());
    assert!(
        is_empty_dir(&dir.path().join("tmp")),
        "work files left behind"
    );

    // The registry is gone: IfNotPresent and Never are served from the store...
    registry.stop();
    let again = store
        .ensure(&image_name, PullPolicy::IfNotPresent, &[])
        .await?;
    assert_eq!(again, image);
    let never = store.ensure(&image_name, PullPolicy::Never, &[]).await?;
    assert_eq!(never, image);
    // ... a reopened store too ...
    let reopened = RegistryImageStore::open(dir.path(), vec![])?;
    assert_eq!(
        reopened
            .ensure(&image_name, PullPolicy::IfNotPresent, &[])
            .await?,
        image
    );
    // ... while Always must ask the registry and fails with its reason.
    let always = store
        .ensure(&image_name, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(always.reason(), "ErrImagePull", "{always}");
    Ok(())
}

#[tokio::test]
async fn missing_images_and_bad_names() -> Result<()> {
    let registry = TestRegistry::start()?;
    registry
        .push_busybox("kith/busybox", "v1", ImageOptions::default())
        .await?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;

    let never = store
        .ensure(
            &registry.image("kith/busybox", "v1"),
            PullPolicy::Never,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(never.reason(), "ErrImageNeverPull");

    let missing_tag = store
        .ensure(
            &registry.image("kith/busybox", "nope"),
            PullPolicy::Always,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(missing_tag.reason(), "ErrImagePull");
    assert!(
        missing_tag.to_string().contains("manifest unknown"),
        "{missing_tag}"
    );

    let missing_repo = store
        .ensure(
            &registry.image("kith/nothing", "v1"),
            PullPolicy::IfNotPresent,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(missing_repo.reason(), "ErrImagePull");
    assert!(
        missing_repo.to_string().contains("unknown"),
        "{missing_repo}"
    );

    let invalid = store
        .ensure("Not A Name", PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(invalid.reason(), "InvalidImageName");
    assert!(store.images()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn hostile_layer_from_registry_is_refused_and_writes_nothing_outside() -> Result<()> {
    let registry = TestRegistry::start()?;
    let outside = tempfile::tempdir()?;
    fs::write(outside.path().join("victim"), "original")?;
    let hostile = raw_tar(&[
        RawEntry::symlink("escape", outside.path().to_str().unwrap()),
        RawEntry::file("escape/victim", "pwned"),
    ]);
    let image = TestImage::busybox(ImageOptions::default())?.with_layer(hostile);
    registry.push("kith/hostile", "v1", &image).await?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;

    let err = store
        .ensure(
            &registry.image("kith/hostile", "v1"),
            PullPolicy::Always,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(err.to_string().contains("\"escape/victim\""), "{err}");
    assert_eq!(
        fs::read_to_string(outside.path().join("victim"))?,
        "original"
    );
    assert_eq!(fs::read_dir(outside.path())?.count(), 1);
    // Nothing half-made is taken for an image.
    assert!(store
        .lookup(&registry.image("kith/hostile", "v1"))?
        .is_none());
    assert!(is_empty_dir(&dir.path().join("rootfs")));
    assert!(is_empty_dir(&dir.path().join("tmp")));
    let never = store
        .ensure(
            &registry.image("kith/hostile", "v1"),
            PullPolicy::Never,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(never.reason(), "ErrImageNeverPull");
    Ok(())
}

#[tokio::test]
async fn concurrent_pulls_share_one_image_and_always_follows_the_tag() -> Result<()> {
    let registry = TestRegistry::start()?;
    registry
        .push_busybox("kith/busybox", "latest", ImageOptions::default())
        .await?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;
    let name = registry.image("kith/busybox", "latest");

    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let (store, name) = (store.clone(), name.clone());
            tokio::spawn(async move { store.ensure(&name, PullPolicy::Always, &[]).await })
        })
        .collect();
    let mut images = Vec::new();
    for pull in pulls {
        images.push(pull.await??);
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fs::read_dir(dir.path().join("rootfs"))?.count(), 1);

    // A new push under the same tag: Always picks it up, IfNotPresent on another name
    // of the first image still finds its own rootfs.
    let first = images.remove(0);
    let second_image = TestImage::busybox(ImageOptions {
        cmd: Some(vec!["true".into()]),
        ..ImageOptions::default()
    })?;
    registry
        .push("kith/busybox", "latest", &second_image)
        .await?;
    let second = store.ensure(&name, PullPolicy::Always, &[]).await?;
    assert_eq!(second.image_id, second_image.image_id());
    assert_ne!(second.image_id, first.image_id);
    assert!(second.rootfs.join("bin/busybox").is_file());
    Ok(())
}

#[tokio::test]
async fn garbage_collection_keeps_images_in_use() -> Result<()> {
    let registry = TestRegistry::start()?;
    registry
        .push_busybox(
            "kith/a",
            "v1",
            ImageOptions {
                cmd: Some(vec!["a".into()]),
                ..ImageOptions::default()
            },
        )
        .await?;
    let extra = TestImage::busybox(ImageOptions {
        cmd: Some(vec!["b".into()]),
        ..ImageOptions::default()
    })?
    .with_layer(raw_tar(&[RawEntry::file("data/big", vec![7u8; 1 << 20])]));
    registry.push("kith/b", "v1", &extra).await?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;
    store.set_gc_grace(std::time::Duration::ZERO);
    store.set_image_min_age(std::time::Duration::ZERO);
    let a = store
        .ensure(
            &registry.image("kith/a", "v1"),
            PullPolicy::IfNotPresent,
            &[],
        )
        .await?;
    let b = store
        .ensure(
            &registry.image("kith/b", "v1"),
            PullPolicy::IfNotPresent,
            &[],
        )
        .await?;
    let blobs = || fs::read_dir(dir.path().join("blobs/sha256")).map(|d| d.count());
    // a: config + layer; b: config + a's layer (shared) + its own.
    assert_eq!(blobs()?, 4);

    let nothing = store
        .collect_garbage(&[a.image_id.clone(), b.image_id.clone()], u64::MAX)
        .await?;
    assert!(nothing.removed_images.is_empty());

    let report = store
        .collect_garbage(std::slice::from_ref(&a.image_id), 1)
        .await?;
    assert_eq!(report.removed_images, vec![b.image_id.clone()]);
    assert!(report.freed_bytes >= 1 << 20, "{report:?}");
    assert!(!b.rootfs.exists());
    assert!(a.rootfs.join("bin/busybox").is_file());
    assert_eq!(blobs()?, 2, "b's own blobs go, the shared layer stays");
    assert!(store.lookup(&b.reference)?.is_none());
    assert_eq!(store.ensure(&a.reference, PullPolicy::Never, &[]).await?, a);
    Ok(())
}

#[tokio::test]
async fn basic_auth_with_dockerconfigjson_credentials() -> Result<()> {
    use base64::Engine;
    use kith_agent::image::credentials_from_dockerconfigjson;
    use kith_agent::image::testing::{TEST_REGISTRY_PASSWORD, TEST_REGISTRY_USER};

    let registry = TestRegistry::start_with_basic_auth()?;
    registry
        .push_busybox("kith/private", "v1", ImageOptions::default())
        .await?;
    let name = registry.image("kith/private", "v1");
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;

    let anonymous = store
        .ensure(&name, PullPolicy::Always, &[])
        .await
        .unwrap_err();
    assert_eq!(anonymous.reason(), "ErrImagePull");
    assert!(
        anonymous.to_string().contains("unauthorized"),
        "{anonymous}"
    );

    let wrong = format!(
        r#"{{"auths":{{"{}":{{"username":"{TEST_REGISTRY_USER}","password":"wrong"}}}}}}"#,
        registry.address()
    );
    let wrong = credentials_from_dockerconfigjson(wrong.as_bytes())?;
    let err = store
        .ensure(&name, PullPolicy::Always, &wrong)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");

    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{TEST_REGISTRY_USER}:{TEST_REGISTRY_PASSWORD}"));
    let secret = format!(
        r#"{{"auths":{{"http://{}/":{{"auth":"{auth}"}}}}}}"#,
        registry.address()
    );
    let creds = credentials_from_dockerconfigjson(secret.as_bytes())?;
    let image = store.ensure(&name, PullPolicy::Always, &creds).await?;
    assert!(image.rootfs.join("bin/busybox").is_file());
    Ok(())
}

#[tokio::test]
async fn multi_arch_index_picks_the_host_platform() -> Result<()> {
    let registry = TestRegistry::start()?;
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let other_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let host = TestImage::busybox(ImageOptions {
        cmd: Some(vec!["host".into()]),
        ..ImageOptions::default()
    })?;
    let other = TestImage::busybox(ImageOptions {
        cmd: Some(vec!["other".into()]),
        ..ImageOptions::default()
    })?;
    // The foreign entry first, so picking the first entry would be caught.
    let index_digest = registry
        .push_index(
            "kith/multi",
            "v1",
            &[(&other, other_arch), (&host, host_arch)],
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let store = RegistryImageStore::open(dir.path(), vec![])?;

    let image = store
        .ensure(
            &registry.image("kith/multi", "v1"),
            PullPolicy::IfNotPresent,
            &[],
        )
        .await?;
    assert_eq!(image.image_id, host.image_id());
    assert_eq!(image.config.cmd, Some(vec!["host".to_string()]));
    assert_eq!(
        image.repo_digest,
        format!("{}/kith/multi@{index_digest}", registry.address())
    );
    Ok(())
}

/// A small tmpfs of its own, unmounted when dropped (also when the test fails).
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size_mib: u64) -> Result<SmallFs> {
        let dir = tempfile::tempdir()?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size_mib}m").as_str()),
        )?;
        Ok(SmallFs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Grows `filler` until the filesystem is at least `percent` used.
fn fill_to(disk: &Statvfs, filler: &Path, percent: u64) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)?;
    let chunk = vec![1u8; 64 << 10];
    loop {
        let u = disk.usage()?;
        if (u.capacity - u.available) * 100 / u.capacity >= percent {
            return Ok(());
        }
        f.write_all(&chunk)?;
        f.sync_data()?;
    }
}

#[tokio::test]
async fn a_full_disk_loses_unused_images_least_recently_used_first() -> Result<()> {
    let registry = TestRegistry::start()?;
    for (name, fill) in [("kith/a", 0usize), ("kith/b", 3 << 20), ("kith/c", 3 << 20)] {
        let image = TestImage::busybox(ImageOptions {
            cmd: Some(vec![name.into()]),
            ..ImageOptions::default()
        })?
        .with_layer(raw_tar(&[RawEntry::file("data/big", vec![7u8; fill])]));
        registry.push(name, "v1", &image).await?;
    }
    let small = SmallFs::mount(48)?;
    let dir = small.path().join("images");
    let store = RegistryImageStore::open(&dir, vec![])?;
    store.set_gc_grace(std::time::Duration::ZERO);
    store.set_image_min_age(std::time::Duration::ZERO);
    let mut pulled = Vec::new();
    for name in ["kith/a", "kith/b", "kith/c"] {
        let image = store
            .ensure(&registry.image(name, "v1"), PullPolicy::IfNotPresent, &[])
            .await?;
        pulled.push(image);
        // Last-use times have a one-second grain on some filesystems.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let [a, b, c] = <[_; 3]>::try_from(pulled).expect("three images");
    let disk = Statvfs(dir.clone());
    let policy = GcPolicy::default();

    // Below the high threshold: nothing happens.
    assert_eq!(
        collect_if_short(&store, &disk, std::slice::from_ref(&a.image_id), &policy).await?,
        None
    );

    // Over it: unused images go, oldest first (b before c), until under the low one; the
    // image in use stays and still starts containers.
    let filler = small.path().join("filler");
    fill_to(&disk, &filler, 86)?;
    let round = collect_if_short(&store, &disk, std::slice::from_ref(&a.image_id), &policy)
        .await?
        .expect("a round ran");
    assert_eq!(
        round.report.removed_images.first(),
        Some(&b.image_id),
        "{round:?}"
    );
    assert!(!round.report.removed_images.contains(&a.image_id));
    assert_eq!(round.shortfall(), None, "{round:?}");
    assert_eq!(
        bytes_to_free(disk.usage()?, &policy),
        None,
        "back under 85%"
    );
    assert!(!b.rootfs.exists());
    assert!(a.rootfs.join("bin/busybox").is_file());
    assert_eq!(store.ensure(&a.reference, PullPolicy::Never, &[]).await?, a);
    let c_left = store.lookup(&c.reference)?.is_some();

    // Full with only the image in use left: the shortfall is reported, a is kept.
    fill_to(&disk, &filler, 97)?;
    let round = collect_if_short(&store, &disk, std::slice::from_ref(&a.image_id), &policy)
        .await?
        .expect("a round ran");
    assert!(round.shortfall().is_some(), "{round:?}");
    assert!(!round.report.removed_images.contains(&a.image_id));
    assert!(
        store.lookup(&c.reference)?.is_none(),
        "c went too (left by the first round: {c_left})"
    );
    assert!(a.rootfs.join("bin/busybox").is_file());
    Ok(())
}
