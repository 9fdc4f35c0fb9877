//! Tables for `seccomp::decide` and the shape of the default profile.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::*;
use crate::spec::DEFAULT_CAPABILITIES;

/// Profiles from a map, as [`ProfileDir`] would read them.
struct MapProfiles(BTreeMap<&'static str, &'static str>);

impl LocalhostProfiles for MapProfiles {
    fn read(&self, relative: &Path) -> Result<Vec<u8>, String> {
        self.0
            .get(relative.to_str().unwrap())
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| "No such file or directory (os error 2)".to_string())
    }
}

const DENY_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
     "comment": "Docker-style keys are ignored"}
  ]
}"#;

fn profiles() -> MapProfiles {
    MapProfiles(
        [
            ("deny-mkdir.json", DENY_MKDIR),
            ("profiles/deny-mkdir.json", DENY_MKDIR),
            ("broken.json", "{ not json"),
            ("notify.json", r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#),
        ]
        .into(),
    )
}

fn default_caps() -> Vec<String> {
    DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
}

fn pod_with(pod_profile: Value, container_profile: Value) -> (Pod, Container) {
    let mut container = json!({"name": "app", "image": "busybox"});
    if !container_profile.is_null() {
        container["securityContext"] = json!({"seccompProfile": container_profile});
    }
    let mut spec = json!({"containers": [container.clone()]});
    if !pod_profile.is_null() {
        spec["securityContext"] = json!({"seccompProfile": pod_profile});
    }
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
    (pod, serde_json::from_value(container).unwrap())
}

/// What a decision came out as, in words a table can hold.
fn outcome(r: Result<Option<LinuxSeccomp>, SeccompError>) -> String {
    match r {
        Ok(None) => "unconfined".into(),
        Ok(Some(p)) if p.default_action() == LinuxSeccompAction::ScmpActErrno => {
            "runtime-default".into()
        }
        Ok(Some(p)) => {
            let names: Vec<String> = p
                .syscalls()
                .iter()
                .flatten()
                .flat_map(|s| s.names().clone())
                .collect();
            format!("localhost:{}", names.join(","))
        }
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn decision_table() {
    let rd = json!({"type": "RuntimeDefault"});
    let unconfined = json!({"type": "Unconfined"});
    let local = |n: &str| json!({"type": "Localhost", "localhostProfile": n});
    let none = Value::Null;
    // (pod profile, container profile, privileged, --seccomp-default, outcome)
    let cases: Vec<(Value, Value, bool, bool, &str)> = vec![
        // Unset: the kubelet's default is Unconfined, RuntimeDefault with the flag.
        (none.clone(), none.clone(), false, false, "unconfined"),
        (none.clone(), none.clone(), false, true, "runtime-default"),
        (rd.clone(), none.clone(), false, false, "runtime-default"),
        (none.clone(), rd.clone(), false, false, "runtime-default"),
        // The container wins over the pod, both ways, and over the flag.
        (rd.clone(), unconfined.clone(), false, false, "unconfined"),
        (unconfined.clone(), rd.clone(), false, false, "runtime-default"),
        (none.clone(), unconfined.clone(), false, true, "unconfined"),
        (unconfined.clone(), none.clone(), false, true, "unconfined"),
        // Privileged containers are never filtered.
        (rd.clone(), rd.clone(), true, true, "unconfined"),
        (none.clone(), local("deny-mkdir.json"), true, false, "unconfined"),
        // Localhost profiles are read from the profile directory.
        (local("deny-mkdir.json"), none.clone(), false, false, "localhost:mkdir,mkdirat"),
        (none.clone(), local("profiles/deny-mkdir.json"), false, false, "localhost:mkdir,mkdirat"),
        (rd.clone(), local("./deny-mkdir.json"), false, false, "localhost:mkdir,mkdirat"),
        (
            none.clone(),
            local("missing.json"),
            false,
            false,
            "error: cannot read localhost seccomp profile \"missing.json\": No such file or directory (os error 2)",
        ),
        (
            none.clone(),
            local("../etc/shadow"),
            false,
            false,
            "error: localhost seccomp profile \"../etc/shadow\" must be a relative path inside the profile directory, without '..'",
        ),
        (
            none.clone(),
            local("/etc/seccomp.json"),
            false,
            false,
            "error: localhost seccomp profile \"/etc/seccomp.json\" must be a relative path inside the profile directory, without '..'",
        ),
        (
            none.clone(),
            local("profiles/../../x.json"),
            false,
            false,
            "error: localhost seccomp profile \"profiles/../../x.json\" must be a relative path inside the profile directory, without '..'",
        ),
        (
            none.clone(),
            json!({"type": "Localhost"}),
            false,
            false,
            "error: seccompProfile type Localhost needs localhostProfile",
        ),
        (
            none.clone(),
            local("notify.json"),
            false,
            false,
            "error: localhost seccomp profile \"notify.json\" is not a valid seccomp profile: SCMP_ACT_NOTIFY is not supported",
        ),
        (
            none.clone(),
            json!({"type": "Sometimes"}),
            false,
            false,
            "error: unknown seccompProfile type \"Sometimes\"",
        ),
    ];
    let profiles = profiles();
    for (pod_p, container_p, privileged, flag, want) in cases {
        let (pod, container) = pod_with(pod_p.clone(), container_p.clone());
        let input = SeccompInput {
            default_runtime_default: flag,
            profiles: &profiles,
        };
        let got = outcome(decide(&pod, &container, privileged, &default_caps(), input));
        assert_eq!(
            got, want,
            "pod {pod_p} container {container_p} privileged {privileged} flag {flag}"
        );
    }
}

#[test]
fn invalid_localhost_profile_names_the_file() {
    let (pod, container) = pod_with(
        Value::Null,
        json!({"type": "Localhost", "localhostProfile": "broken.json"}),
    );
    let input = SeccompInput {
        default_runtime_default: false,
        profiles: &profiles(),
    };
    let err = decide(&pod, &container, false, &default_caps(), input).unwrap_err();
    assert!(
        matches!(&err, SeccompError::Invalid { path, .. } if path == "broken.json"),
        "{err:?}"
    );
}

/// Every rule of `profile` for `name`, as (action, errno, args).
fn rules_for<'p>(profile: &'p LinuxSeccomp, name: &str) -> Vec<&'p LinuxSyscall> {
    profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|s| s.names().iter().any(|n| n == name))
        .collect()
}

fn unconditionally_allowed(profile: &LinuxSeccomp, name: &str) -> bool {
    rules_for(profile, name)
        .iter()
        .any(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
}

#[test]
fn default_profile_denies_with_eperm_and_lists_architectures() {
    let p = default_profile(&default_caps()).unwrap();
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret(), Some(1));
    let arches = p.architectures().clone().unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            arches,
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
    }
    for name in [
        "read",
        "write",
        "execve",
        "openat",
        "mmap",
        "futex",
        "socket",
        "exit_group",
        "chroot",
    ] {
        assert!(
            unconditionally_allowed(&p, name),
            "{name} should be allowed"
        );
    }
}

#[test]
fn blocked_calls_are_not_allowed_without_capabilities() {
    let p = default_profile(&[]).unwrap();
    // The documented list covers what Docker's documentation names as blocked.
    let documented: Vec<&str> = BLOCKED.iter().map(|(n, _)| *n).collect();
    for name in [
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "mount",
        "umount2",
        "pivot_root",
        "swapon",
        "swapoff",
        "clock_settime",
        "settimeofday",
        "clock_adjtime",
        "add_key",
        "keyctl",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "open_by_handle_at",
        "name_to_handle_at",
        "unshare",
        "setns",
        "acct",
        "quotactl",
        "personality",
        "clone3",
    ] {
        assert!(
            documented.contains(&name),
            "{name} is not documented in BLOCKED"
        );
    }
    // ... and none of them is allowed outright (personality and clone only with checked
    // arguments, below).
    for (name, _) in BLOCKED {
        assert!(
            !unconditionally_allowed(&p, name),
            "{name} is blocked yet allowed"
        );
        if *name != "personality" && *name != "clone3" {
            assert!(rules_for(&p, name).is_empty(), "{name} has a rule");
        }
    }
    // No call is both allowed to everyone and documented as blocked.
    for (_, names) in ALLOWED {
        for n in *names {
            assert!(!documented.contains(n), "{n} both allowed and blocked");
        }
    }
}

#[test]
fn clone3_fails_with_enosys_and_clone_without_namespace_flags() {
    let p = default_profile(&default_caps()).unwrap();
    let clone3 = rules_for(&p, "clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3[0].errno_ret(), Some(38));

    let clone = rules_for(&p, "clone");
    assert_eq!(clone.len(), 1, "{clone:?}");
    let args = clone[0].args().clone().unwrap();
    assert_eq!(clone[0].action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(args.len(), 1);
    assert_eq!(args[0].index(), 0);
    assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    assert_eq!(args[0].value(), 0);
    // CLONE_NEWUSER and CLONE_NEWNET are among the masked flags; CLONE_THREAD is not.
    let mask = args[0].value_two().unwrap();
    assert_eq!(mask & 0x1000_0000, 0x1000_0000);
    assert_eq!(mask & 0x4000_0000, 0x4000_0000);
    assert_eq!(mask & 0x0001_0000, 0);
}

#[test]
fn personality_only_with_the_usual_values() {
    let p = default_profile(&default_caps()).unwrap();
    let mut values: Vec<u64> = rules_for(&p, "personality")
        .iter()
        .map(|r| {
            assert_eq!(r.action(), LinuxSeccompAction::ScmpActAllow);
            let args = r.args().clone().unwrap();
            assert_eq!(args.len(), 1);
            assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpEq);
            args[0].value()
        })
        .collect();
    values.sort();
    assert_eq!(values, vec![0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff]);
}

#[test]
fn capabilities_open_what_they_govern() {
    // (capability added to the defaults, calls it opens)
    let cases: &[(&str, &[&str])] = &[
        (
            "CAP_SYS_ADMIN",
            &[
                "mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf",
            ],
        ),
        (
            "CAP_SYS_PTRACE",
            &["process_vm_readv", "process_vm_writev", "kcmp"],
        ),
        (
            "CAP_SYS_TIME",
            &["clock_settime", "settimeofday", "clock_adjtime"],
        ),
        (
            "CAP_SYS_MODULE",
            &["init_module", "finit_module", "delete_module"],
        ),
        ("CAP_SYS_BOOT", &["reboot", "kexec_load"]),
        ("CAP_SYS_PACCT", &["acct"]),
    ];
    for (cap, names) in cases {
        let mut caps = default_caps();
        caps.push(cap.to_string());
        let p = default_profile(&caps).unwrap();
        for name in *names {
            assert!(
                unconditionally_allowed(&p, name),
                "{cap} should allow {name}"
            );
        }
        // The defaults alone do not.
        let base = default_profile(&default_caps()).unwrap();
        for name in *names {
            assert!(
                !unconditionally_allowed(&base, name),
                "{name} allowed without {cap}"
            );
        }
    }
    // With CAP_SYS_ADMIN clone is not argument-filtered and clone3 no longer ENOSYS.
    let mut caps = default_caps();
    caps.push("CAP_SYS_ADMIN".into());
    let p = default_profile(&caps).unwrap();
    assert_eq!(rules_for(&p, "clone").len(), 1);
    assert!(rules_for(&p, "clone3")
        .iter()
        .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
    // Dropping CAP_SYS_CHROOT (a default one) closes chroot.
    let caps: Vec<String> = default_caps()
        .into_iter()
        .filter(|c| c != "CAP_SYS_CHROOT")
        .collect();
    assert!(!unconditionally_allowed(
        &default_profile(&caps).unwrap(),
        "chroot"
    ));
}

#[test]
fn profile_dir_refuses_symlinks_out_of_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("seccomp");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("ok.json"), DENY_MKDIR).unwrap();
    std::fs::write(root.path().join("outside.json"), DENY_MKDIR).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.json"), dir.join("link.json")).unwrap();
    let profiles = ProfileDir(dir.clone());
    assert_eq!(
        profiles.read(Path::new("ok.json")).unwrap(),
        DENY_MKDIR.as_bytes()
    );
    let err = profiles.read(Path::new("link.json")).unwrap_err();
    assert!(err.contains("outside"), "{err}");
    assert!(profiles.read(Path::new("nope.json")).is_err());
    assert_eq!(
        profiles.display(Path::new("ok.json")),
        dir.join("ok.json").display().to_string()
    );
}
