//! The README's walk-through, run as written, and the first refusals a new user meets.
//!
//! ```text
//!  README.md ```sh walkthrough block ──parse──► [Step { command, expect }]
//!        each command ──► bash -c, cwd = the repository, PATH = { kubectl → pinned 1.33,
//!                         kith → $KITH_BIN with --data-dir of the test cluster },
//!                         KUBECONFIG = the test cluster's
//!        `# expect N× TEXT` / `# expect nothing` ──► re-run until stdout matches (≤ 60 s)
//! ```
//!
//! Two substitutions make the block runnable beside other tests: `/tmp/` becomes the
//! cluster's scratch directory (concurrent runs would share `/tmp/hello-v1.tar`), and
//! `kith image import` gets the test cluster's `--data-dir`. Everything else is the README's
//! text. The cluster is an agent cluster (`AgentOptions::unique`): real images, containers
//! and pod IPs, removed with the cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kith_e2e::{kith_bin, manifests_dir, AgentOptions, Cluster, Kubectl, Options};

/// How long a command with an expectation may keep disagreeing (pods stopping, going).
const SETTLE: Duration = Duration::from_secs(60);
/// Upper bound for one command (`rollout status` carries its own 120 s timeout).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// What a command of the walk-through must print.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// `# expect N× TEXT`: exactly `count` non-empty lines, each equal to `text`.
    Lines { count: usize, text: String },
    /// `# expect nothing`: no output.
    Nothing,
}

impl Expect {
    fn matches(&self, stdout: &str) -> bool {
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        match self {
            Expect::Nothing => lines.is_empty(),
            Expect::Lines { count, text } => {
                lines.len() == *count && lines.iter().all(|l| l.trim_end() == text)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    command: String,
    expect: Option<Expect>,
}

/// The commands of the README's ```` ```sh walkthrough ```` block, each with the
/// `# expect` line that follows it, if any. Other comments and blank lines are prose.
fn parse_walkthrough(readme: &str) -> Result<Vec<Step>> {
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "```sh walkthrough")
        .context("README.md has no ```sh walkthrough block")?;
    let mut steps: Vec<Step> = Vec::new();
    for line in lines {
        let line = line.trim();
        if line == "```" {
            if steps.is_empty() {
                bail!("the walkthrough block has no commands");
            }
            return Ok(steps);
        }
        if let Some(rest) = line.strip_prefix("# expect ") {
            let expect = parse_expect(rest)?;
            let Some(step) = steps.last_mut() else {
                bail!("`# expect {rest}` before any command");
            };
            if step.expect.replace(expect).is_some() {
                bail!("two expectations for `{}`", step.command);
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            steps.push(Step {
                command: line.to_string(),
                expect: None,
            });
        }
    }
    bail!("the walkthrough block is not closed")
}

fn parse_expect(rest: &str) -> Result<Expect> {
    if rest.trim() == "nothing" {
        return Ok(Expect::Nothing);
    }
    let (count, text) = rest
        .split_once('×')
        .with_context(|| format!("`# expect {rest}`: want `N× TEXT` or `nothing`"))?;
    let count = count
        .trim()
        .parse()
        .with_context(|| format!("`# expect {rest}`: {count:?} is not a count"))?;
    let text = text.trim();
    if text.is_empty() {
        bail!("`# expect {rest}`: no text");
    }
    Ok(Expect::Lines {
        count,
        text: text.to_string(),
    })
}

#[test]
fn walkthrough_blocks_parse() {
    type Case = (&'static str, Result<Vec<Step>, &'static str>);
    let step = |command: &str, expect: Option<Expect>| Step {
        command: command.into(),
        expect,
    };
    let cases: Vec<Case> = vec![
        (
            "intro\n```sh walkthrough\n# make it\nmake x\n\ncurl a\n# expect 2× hi there\nkubectl get\n# expect nothing\n```\nafter",
            Ok(vec![
                step("make x", None),
                step(
                    "curl a",
                    Some(Expect::Lines {
                        count: 2,
                        text: "hi there".into(),
                    }),
                ),
                step("kubectl get", Some(Expect::Nothing)),
            ]),
        ),
        ("```sh\nls\n```", Err("no ```sh walkthrough block")),
        ("```sh walkthrough\nls\n", Err("not closed")),
        ("```sh walkthrough\n# only prose\n```", Err("no commands")),
        ("```sh walkthrough\n# expect nothing\nls\n```", Err("before any command")),
        ("```sh walkthrough\nls\n# expect some\n```", Err("want `N× TEXT`")),
        ("```sh walkthrough\nls\n# expect x× a\n```", Err("is not a count")),
        ("```sh walkthrough\nls\n# expect 2×\n```", Err("no text")),
        (
            "```sh walkthrough\nls\n# expect nothing\n# expect nothing\n```",
            Err("two expectations"),
        ),
    ];
    for (readme, want) in cases {
        let got = parse_walkthrough(readme);
        match (&got, want) {
            (Ok(steps), Ok(want)) => assert_eq!(steps, &want, "{readme:?}"),
            (Err(e), Err(needle)) => {
                assert!(e.to_string().contains(needle), "{readme:?}: {e}")
            }
            _ => panic!("{readme:?}: got {got:?}"),
        }
    }
}

#[test]
fn expectations_match_output() {
    let v1 = Expect::Lines {
        count: 2,
        text: "hello v1".into(),
    };
    let cases = [
        (&v1, "hello v1\nhello v1\n", true),
        (&v1, "hello v1\n\nhello v1", true),
        (&v1, "hello v1\n", false),
        (&v1, "hello v1\nhello v2\n", false),
        (&v1, "hello v1\nhello v1\nhello v1\n", false),
        (&Expect::Nothing, "", true),
        (&Expect::Nothing, "\n", true),
        (&Expect::Nothing, "pod/x\n", false),
    ];
    for (expect, out, want) in cases {
        assert_eq!(expect.matches(out), want, "{expect:?} on {out:?}");
    }
}

#[test]
fn the_readme_has_a_walkthrough() -> Result<()> {
    let steps = parse_walkthrough(&std::fs::read_to_string(repo().join("README.md"))?)?;
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    for needle in [
        "kith image import",
        "kubectl apply -f manifests/hello.yaml",
        "kubectl scale",
        "kubectl set image",
        "kubectl delete -f manifests/hello.yaml",
    ] {
        assert!(
            commands.iter().any(|c| c.contains(needle)),
            "no `{needle}` in the walk-through: {commands:#?}"
        );
    }
    Ok(())
}

fn repo() -> PathBuf {
    manifests_dir()
        .parent()
        .expect("manifests/ sits in the repository")
        .to_path_buf()
}

/// A PATH directory where `kubectl` is the pinned 1.33 and `kith` is the binary under test,
/// pointed at the cluster's data directory for `kith image import`.
fn tool_dir(cluster: &Cluster) -> Result<PathBuf> {
    let bin = cluster.scratch().join("bin");
    std::fs::create_dir_all(&bin)?;
    std::os::unix::fs::symlink(Kubectl::V1_33.path(), bin.join("kubectl"))?;
    let wrapper = format!(
        "#!/bin/sh\nif [ \"$1 $2\" = \"image import\" ]; then exec '{kith}' \"$@\" --data-dir '{data}'; fi\nexec '{kith}' \"$@\"\n",
        kith = kith_bin().display(),
        data = cluster.data_dir().display(),
    );
    let path = bin.join("kith");
    std::fs::write(&path, wrapper)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run_step(cluster: &Cluster, bin: &Path, command: &str) -> Result<Ran> {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = tokio::process::Command::new("bash")
        .args(["-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("KUBECACHEDIR", cluster.scratch().join("kube-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn bash")?;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("`{command}` did not finish within {COMMAND_TIMEOUT:?}"))??;
    Ok(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What the cluster looked like when a step failed.
async fn diagnose(cluster: &Cluster) -> String {
    let mut out = String::new();
    for args in [
        &["get", "deploy,rs,pods", "-o", "wide"][..],
        &["describe", "pods", "-l", "app=hello"][..],
    ] {
        if let Ok(o) = cluster.kubectl(Kubectl::V1_33, args).await {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
    }
    format!("{out}\nkith log:\n{}", cluster.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let steps = parse_walkthrough(&readme)?;
    let cluster = Cluster::up_with(Options {
        agent: Some(AgentOptions::unique("walk")),
        ..Default::default()
    })
    .await?;
    let bin = tool_dir(&cluster)?;
    let scratch = format!("{}/", cluster.scratch().display());
    for step in &steps {
        let command = step.command.replace("/tmp/", &scratch);
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let ran = run_step(&cluster, &bin, &command).await?;
            let matched = match &step.expect {
                None => true,
                Some(expect) => expect.matches(&ran.stdout),
            };
            if ran.ok && matched {
                println!("$ {}\n{}", step.command, ran.stdout);
                break;
            }
            // A command without an expectation must just work. One with an expectation
            // may also fail while things settle (a curl to a pod that is just stopping).
            if step.expect.is_none() || tokio::time::Instant::now() >= deadline {
                bail!(
                    "`{}` ({}) {}; expected {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
                    step.command,
                    command,
                    if ran.ok {
                        "printed otherwise"
                    } else {
                        "failed"
                    },
                    step.expect,
                    ran.stdout,
                    ran.stderr,
                    diagnose(&cluster).await
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Runs the kith binary with `args`; returns (exit code, stdout, stderr).
async fn kith(args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let child = tokio::process::Command::new(kith_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", kith_bin().display()))?;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("kith {} did not finish", args.join(" ")))??;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn kith_up_refuses_a_taken_port_in_one_line() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let dir = tempfile::Builder::new()
        .prefix("kith-e2e-port-")
        .tempdir()?;
    let data = dir.path().join("data");
    let (code, stdout, stderr) = kith(&[
        "up",
        "--no-agent",
        "--data-dir",
        &data.to_string_lossy(),
        "--listen",
        &addr,
    ])
    .await?;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stderr,
        format!(
            "kith up: cannot listen on {addr}: the port is already in use (is another kith or kube-apiserver running?)\n"
        )
    );
    assert_eq!(stdout, "");
    // Refused before any state was made.
    assert!(!data.join("pki").exists(), "certificates were created");
    Ok(())
}

#[tokio::test]
async fn kith_image_import_refuses_hostile_and_broken_archives_in_one_line() -> Result<()> {
    use kith_agent::image::testing::{raw_tar, ImageOptions, RawEntry, TestImage};
    let dir = tempfile::Builder::new()
        .prefix("kith-e2e-import-")
        .tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let write = |name: &str, bytes: Vec<u8>| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let cases = [
        (
            write(
                "escape.tar",
                raw_tar(&[RawEntry::file("../../escaped", "x")]),
            )?,
            "escapes the archive",
        ),
        (
            write(
                "link.tar",
                raw_tar(&[RawEntry::symlink("index.json", "../../../etc/passwd")]),
            )?,
            "points outside the archive",
        ),
        (
            write(
                "garbage.tar",
                b"this is not a tar archive at all".repeat(40),
            )?,
            "",
        ),
        (
            write(
                "empty-layout.tar",
                raw_tar(&[RawEntry::file("oci-layout", "{}")]),
            )?,
            "neither index.json",
        ),
        (
            dir.path()
                .join("missing.tar")
                .to_string_lossy()
                .into_owned(),
            "missing.tar",
        ),
    ];
    for (file, needle) in &cases {
        let (code, stdout, stderr) =
            kith(&["image", "import", file, "--data-dir", &data_arg]).await?;
        assert_eq!(code, Some(1), "{file}: stdout {stdout:?} stderr {stderr:?}");
        assert!(
            stderr.starts_with("kith image import: ")
                && stderr.ends_with('\n')
                && stderr.lines().count() == 1
                && stderr.contains(needle),
            "{file}: want one line with {needle:?}, got {stderr:?}"
        );
        assert_eq!(stdout, "", "{file}");
    }
    assert!(!dir.path().join("escaped").exists());
    assert!(!data.join("escaped").exists());
    let images = data.join("agent/images/images");
    let stored = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "a refused archive stored an image");

    // The two formats that do import: an OCI layout and a `docker save` tar.
    let image = TestImage::busybox(ImageOptions::default())?;
    let oci = dir.path().join("oci.tar");
    image.write_oci_archive("registry.example/tools/busybox:1", &oci)?;
    let docker = dir.path().join("docker.tar");
    image.write_docker_archive("registry.example/tools/busybox:2", &docker)?;
    for (file, name) in [
        (&oci, "registry.example/tools/busybox:1"),
        (&docker, "registry.example/tools/busybox:2"),
    ] {
        let (code, stdout, stderr) = kith(&[
            "image",
            "import",
            &file.to_string_lossy(),
            "--data-dir",
            &data_arg,
        ])
        .await?;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stdout, format!("imported {name}\n"));
    }
    Ok(())
}
