//! `import_archive`: OCI layout and docker-save tars into the store, then `ensure(Never)`.

use std::fs;

use anyhow::Result;
use kith_agent::image::testing::{raw_tar, sha256_digest, ImageOptions, RawEntry, TestImage};
use kith_agent::image::{import_archive, ImageStore, PullPolicy, RegistryImageStore};

fn image() -> Result<TestImage> {
    Ok(TestImage::busybox(ImageOptions {
        entrypoint: Some(vec!["/bin/sh".into()]),
        ..ImageOptions::default()
    })?
    .with_layer(raw_tar(&[
        RawEntry::dir("srv"),
        RawEntry::file("srv/index.html", "hello"),
    ])))
}

#[tokio::test]
async fn oci_archive_import_then_never_pull() -> Result<()> {
    let work = tempfile::tempdir()?;
    let archive = work.path().join("image.oci.tar");
    let image = image()?;
    image.write_oci_archive("kith.test/imported:v1", &archive)?;
    let store = RegistryImageStore::open(&work.path().join("store"), vec![])?;

    let names = import_archive(&store, &archive)?;
    assert_eq!(names, vec!["kith.test/imported:v1".to_string()]);
    let pulled = store
        .ensure("kith.test/imported:v1", PullPolicy::Never, &[])
        .await?;
    assert_eq!(pulled.image_id, image.image_id());
    let manifest_digest = sha256_digest(&serde_json::to_vec(&image.manifest())?);
    assert_eq!(
        pulled.repo_digest,
        format!("kith.test/imported@{manifest_digest}")
    );
    assert_eq!(pulled.config.entrypoint, Some(vec!["/bin/sh".to_string()]));
    assert!(pulled.rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_to_string(pulled.rootfs.join("srv/index.html"))?,
        "hello"
    );
    assert_eq!(
        store
            .ensure("kith.test/imported:v1", PullPolicy::IfNotPresent, &[])
            .await?,
        pulled
    );
    Ok(())
}

#[tokio::test]
async fn docker_save_import_then_never_pull() -> Result<()> {
    let work = tempfile::tempdir()?;
    let archive = work.path().join("image.docker.tar");
    let image = image()?;
    image.write_docker_archive("saved:v2", &archive)?;
    let store = RegistryImageStore::open(&work.path().join("store"), vec![])?;

    let names = import_archive(&store, &archive)?;
    assert_eq!(names, vec!["docker.io/library/saved:v2".to_string()]);
    let pulled = store.ensure("saved:v2", PullPolicy::Never, &[]).await?;
    assert_eq!(pulled.image_id, image.image_id());
    assert!(
        pulled
            .repo_digest
            .starts_with("docker.io/library/saved@sha256:"),
        "{}",
        pulled.repo_digest
    );
    assert!(pulled
        .rootfs
        .join("bin/sh")
        .symlink_metadata()?
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_to_string(pulled.rootfs.join("srv/index.html"))?,
        "hello"
    );
    Ok(())
}

#[test]
fn hostile_archives_are_refused() -> Result<()> {
    let work = tempfile::tempdir()?;
    let store = RegistryImageStore::open(&work.path().join("store"), vec![])?;
    let outside = work.path().join("outside");
    fs::create_dir(&outside)?;

    // An archive path climbing out.
    let escaping = work.path().join("escaping.tar");
    fs::write(
        &escaping,
        raw_tar(&[
            RawEntry::file("../outside/evil", "x"),
            RawEntry::file("index.json", "{}"),
        ]),
    )?;
    let err = import_archive(&store, &escaping).unwrap_err();
    assert!(
        err.to_string().contains("\"../outside/evil\" escapes"),
        "{err}"
    );

    // A link pointing out of the archive.
    let linking = work.path().join("linking.tar");
    fs::write(
        &linking,
        raw_tar(&[RawEntry::symlink("manifest.json", "../../outside/x")]),
    )?;
    let err = import_archive(&store, &linking).unwrap_err();
    assert!(
        err.to_string().contains("points outside the archive"),
        "{err}"
    );

    // A blob whose content does not match its name.
    let good = work.path().join("good.tar");
    image()?.write_oci_archive("kith.test/tampered:v1", &good)?;
    let mut entries = Vec::new();
    let mut archive = tar::Archive::new(fs::File::open(&good)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content)?;
        if content.starts_with(&[0x1f, 0x8b]) {
            content = b"not the layer you were promised".to_vec();
        }
        entries.push(RawEntry::file(&path, content));
    }
    let tampered = work.path().join("tampered.tar");
    fs::write(&tampered, raw_tar(&entries))?;
    let err = import_archive(&store, &tampered).unwrap_err();
    assert!(err.to_string().contains("has digest"), "{err}");

    // A hostile layer inside a well-formed archive.
    let hostile = work.path().join("hostile.tar");
    TestImage::from_layers(
        vec![raw_tar(&[
            RawEntry::symlink("etc", outside.to_str().unwrap()),
            RawEntry::file("etc/passwd", "pwned"),
        ])],
        ImageOptions::default(),
    )
    .write_docker_archive("hostile:v1", &hostile)?;
    let err = import_archive(&store, &hostile).unwrap_err();
    assert!(err.to_string().contains("\"etc/passwd\""), "{err}");

    // Not an image archive at all.
    let empty = work.path().join("empty.tar");
    fs::write(&empty, raw_tar(&[RawEntry::file("README", "hi")]))?;
    assert!(import_archive(&store, &empty).is_err());

    assert_eq!(fs::read_dir(&outside)?.count(), 0, "written outside");
    assert!(store.images()?.is_empty());
    assert_eq!(fs::read_dir(store.dir().join("rootfs"))?.count(), 0);
    assert_eq!(fs::read_dir(store.dir().join("tmp"))?.count(), 0);
    Ok(())
}

/// Newer `docker save` writes an OCI layout whose index names images by bare tag, next to
/// a manifest.json with the full names.
#[tokio::test]
async fn combined_layout_falls_back_to_manifest_json() -> Result<()> {
    let work = tempfile::tempdir()?;
    let image = image()?;
    let (oci, docker) = (work.path().join("oci.tar"), work.path().join("docker.tar"));
    image.write_oci_archive("v1", &oci)?;
    image.write_docker_archive("merged:v1", &docker)?;
    let mut entries: Vec<RawEntry> = Vec::new();
    for part in [&oci, &docker] {
        let mut archive = tar::Archive::new(fs::File::open(part)?);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)?;
            if !entries.iter().any(|e| e.path == path) {
                entries.push(RawEntry::file(&path, content));
            }
        }
    }
    let combined = work.path().join("combined.tar");
    fs::write(&combined, raw_tar(&entries))?;
    let store = RegistryImageStore::open(&work.path().join("store"), vec![])?;
    assert_eq!(
        import_archive(&store, &combined)?,
        vec!["docker.io/library/merged:v1".to_string()]
    );
    let pulled = store.ensure("merged:v1", PullPolicy::Never, &[]).await?;
    assert_eq!(pulled.image_id, image.image_id());

    // The OCI layout alone names nothing usable.
    let err = import_archive(&store, &oci).unwrap_err();
    assert!(err.to_string().contains("full name"), "{err}");
    Ok(())
}

/// What a crash can leave behind is never taken for a complete image.
#[tokio::test]
async fn leftovers_of_a_crash_are_not_images() -> Result<()> {
    let work = tempfile::tempdir()?;
    let archive = work.path().join("image.oci.tar");
    image()?.write_oci_archive("kith.test/crash:v1", &archive)?;
    let dir = work.path().join("store");
    let store = RegistryImageStore::open(&dir, vec![])?;
    import_archive(&store, &archive)?;
    let pulled = store
        .ensure("kith.test/crash:v1", PullPolicy::Never, &[])
        .await?;

    // A record whose rootfs is gone (removed by hand) is not an image.
    fs::rename(&pulled.rootfs, dir.join("tmp/half"))?;
    let err = store
        .ensure("kith.test/crash:v1", PullPolicy::Never, &[])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ErrImageNeverPull");

    // Work in progress (temp rootfs, partial blobs) is swept when the store opens.
    fs::create_dir_all(dir.join("tmp/rootfs-1/bin"))?;
    fs::write(dir.join("tmp/layer-2"), "partial")?;
    let reopened = RegistryImageStore::open(&dir, vec![])?;
    assert_eq!(fs::read_dir(dir.join("tmp"))?.count(), 0);

    // Importing again rebuilds the rootfs from the stored blobs.
    import_archive(&reopened, &archive)?;
    let again = reopened
        .ensure("kith.test/crash:v1", PullPolicy::Never, &[])
        .await?;
    assert_eq!(again.image_id, pulled.image_id);
    assert!(again.rootfs.join("bin/busybox").is_file());
    Ok(())
}
