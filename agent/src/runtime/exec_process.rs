//! What a process started in a running container (`kubectl exec`, exec probes) runs
//! with: the container's own process settings — user and groups, capabilities,
//! no_new_privs, environment, working directory — and its seccomp filter, as runc and
//! containerd give an exec'd process.
//!
//! ```text
//!  <dir>/config.json ─► plan(spec, command, tty) ─► ExecProcess
//!                                                    ├ process ──► exec-<pid>.json ──► libcontainer
//!                                                    │                                 tenant builder
//!                                                    └ seccomp ──► SeccompExecutor: in the exec'd
//!                                                                  process, load the filter, drop
//!                                                                  the helper capabilities, execvp
//! ```
//! One [`plan`] serves both the plain and the terminal exec, so the two cannot drift.
//!
//! Why an executor: libcontainer 0.7 (the newest release) rebuilds `linux` for a tenant
//! from namespaces, cgroups path, personality and time offsets only, so `linux.seccomp`
//! never reaches its init code, and a process spec cannot carry a filter. Its executor
//! is the one hook that runs in the exec'd process, right before execve. By then the
//! capabilities are dropped, and without no_new_privs the kernel only lets a process
//! holding CAP_SYS_ADMIN load a filter (runc loads it before dropping them). So when the
//! container has neither no_new_privs nor CAP_SYS_ADMIN, the exec'd process is given
//! CAP_SYS_ADMIN (and CAP_SETPCAP, which dropping from the bounding set needs) on top of
//! the container's set, loads the filter, and drops back to exactly the container's set
//! before execve. Like runc's, that drop runs under the filter: a profile that denies
//! capset or prctl fails the container's own start as well.

use std::collections::HashMap;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, Process, Spec,
};

use super::pty;

/// Why an exec cannot be planned from the container's spec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecPlanError {
    #[error("the container's spec has no process")]
    NoProcess,
    #[error("exec needs a command")]
    NoCommand,
    #[error("the container's seccomp filter hands syscalls to a notify listener, which exec does not support")]
    NotifyFilter,
}

/// The settings of one exec'd process.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecProcess {
    /// The process spec for libcontainer's tenant builder (`with_process`).
    pub process: Process,
    /// The container's filter, which the exec'd process loads itself (see the module doc).
    pub seccomp: Option<SeccompLoad>,
}

/// A seccomp filter to load in the exec'd process just before execve.
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompLoad {
    pub filter: LinuxSeccomp,
    /// Set when `process` holds capabilities only to load the filter: the container's own
    /// capabilities, which the process drops back to once the filter is in place.
    pub restore: Option<LinuxCapabilities>,
}

/// The process `command` runs as in the container described by `spec`: the container's
/// own process with `args` replaced, a terminal when `tty` (plus `TERM=xterm` unless the
/// environment names one, as containerd's CRI does), and the container's seccomp filter.
pub fn plan(spec: &Spec, command: Vec<String>, tty: bool) -> Result<ExecProcess, ExecPlanError> {
    if command.is_empty() || command[0].is_empty() {
        return Err(ExecPlanError::NoCommand);
    }
    let mut process = spec.process().clone().ok_or(ExecPlanError::NoProcess)?;
    let mut env = process.env().clone().unwrap_or_default();
    if tty {
        env = pty::with_term(env);
    }
    process
        .set_args(Some(command))
        .set_terminal(Some(tty))
        .set_env(Some(env));
    let Some(filter) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(ExecProcess {
            process,
            seccomp: None,
        });
    };
    if is_notify(&filter) {
        return Err(ExecPlanError::NotifyFilter);
    }
    let caps = process
        .capabilities()
        .clone()
        .unwrap_or_else(no_capabilities);
    let restore = match helper_capabilities(&process, &caps) {
        Some(raised) => {
            process.set_capabilities(Some(raised));
            Some(caps)
        }
        None => None,
    };
    Ok(ExecProcess {
        process,
        seccomp: Some(SeccompLoad { filter, restore }),
    })
}

/// The container's capabilities plus what loading a filter after the drop needs, or
/// `None` when the process can load it as it is (no_new_privs, or CAP_SYS_ADMIN held).
fn helper_capabilities(process: &Process, caps: &LinuxCapabilities) -> Option<LinuxCapabilities> {
    let effective = caps.effective().clone().unwrap_or_default();
    if process.no_new_privileges() == Some(true) || effective.contains(&Capability::SysAdmin) {
        return None;
    }
    let extra: Capabilities = [Capability::SysAdmin, Capability::Setpcap].into();
    let widen = |set: &Option<Capabilities>| -> Capabilities {
        set.clone()
            .unwrap_or_default()
            .union(&extra)
            .copied()
            .collect()
    };
    let mut raised = caps.clone();
    raised
        .set_bounding(Some(widen(caps.bounding())))
        .set_effective(Some(widen(caps.effective())))
        .set_permitted(Some(widen(caps.permitted())));
    Some(raised)
}

/// An empty capability set in every category (oci-spec's default is Docker's set).
fn no_capabilities() -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(Capabilities::new()))
        .set_effective(Some(Capabilities::new()))
        .set_permitted(Some(Capabilities::new()))
        .set_inheritable(None)
        .set_ambient(None);
    caps
}

fn is_notify(filter: &LinuxSeccomp) -> bool {
    filter.default_action() == LinuxSeccompAction::ScmpActNotify
        || filter
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

/// libcontainer's executor for an exec'd process under a seccomp filter: loads the
/// filter, drops the helper capabilities, then runs the command as the default
/// executor does. It runs in the exec'd process itself, after libcontainer set its
/// user, capabilities and working directory.
#[derive(Clone)]
pub struct SeccompExecutor {
    load: SeccompLoad,
}

impl SeccompExecutor {
    pub fn new(load: SeccompLoad) -> SeccompExecutor {
        SeccompExecutor { load }
    }
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ExecutorError::Other(format!("{what} for the exec'd process: {e}"))
        };
        // Notify filters are refused by `plan`, so no listener fd can come back.
        libcontainer::seccomp::initialize_seccomp(&self.load.filter)
            .map_err(|e| fail("cannot load the container's seccomp filter", &e))?;
        if let Some(caps) = &self.load.restore {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .map_err(|e| fail("cannot drop back to the container's capabilities", &e))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(process: serde_json::Value, seccomp: Option<serde_json::Value>) -> Spec {
        let mut linux = json!({"namespaces": [{"type": "pid"}]});
        if let Some(s) = seccomp {
            linux["seccomp"] = s;
        }
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "process": process,
            "root": {"path": "rootfs"},
            "linux": linux,
        }))
        .unwrap()
    }

    fn caps(names: &[&str]) -> serde_json::Value {
        json!({"bounding": names, "effective": names, "permitted": names})
    }

    fn set(names: &[&str]) -> Capabilities {
        names
            .iter()
            .map(|n| serde_json::from_value(json!(n)).unwrap())
            .collect()
    }

    fn filter() -> serde_json::Value {
        json!({"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})
    }

    /// The container's process: uid 1000, groups, env, cwd.
    fn container_process(
        capabilities: serde_json::Value,
        no_new_privs: Option<bool>,
    ) -> serde_json::Value {
        let mut p = json!({
            "terminal": false,
            "user": {"uid": 1000, "gid": 2000, "additionalGids": [3000]},
            "args": ["sleep", "1000"],
            "env": ["PATH=/bin", "A=b"],
            "cwd": "/work",
            "capabilities": capabilities,
        });
        if let Some(v) = no_new_privs {
            p["noNewPrivileges"] = json!(v);
        }
        p
    }

    /// Both kinds of exec keep every setting of the container's process; only args,
    /// terminal and (for a terminal) TERM differ.
    #[test]
    fn plain_and_terminal_exec_share_the_container_settings() {
        let s = spec(
            container_process(caps(&["CAP_CHOWN", "CAP_KILL"]), Some(true)),
            Some(filter()),
        );
        let cmd = vec!["sh".to_string(), "-c".into(), "id".into()];
        let plain = plan(&s, cmd.clone(), false).unwrap();
        let term = plan(&s, cmd.clone(), true).unwrap();
        let base = s.process().clone().unwrap();
        for (p, tty, env) in [
            (&plain.process, false, vec!["PATH=/bin", "A=b"]),
            (&term.process, true, vec!["PATH=/bin", "A=b", "TERM=xterm"]),
        ] {
            assert_eq!(p.args().as_deref(), Some(&cmd[..]));
            assert_eq!(p.terminal(), Some(tty));
            assert_eq!(
                p.env().clone().unwrap(),
                env.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            );
            assert_eq!(p.user(), base.user());
            assert_eq!(p.cwd(), base.cwd());
            assert_eq!(p.capabilities(), base.capabilities());
            assert_eq!(p.no_new_privileges(), Some(true));
        }
        assert_eq!(plain.seccomp, term.seccomp);
    }

    /// When the exec'd process needs helper capabilities to load the filter, and which.
    #[test]
    fn helper_capabilities_only_when_the_kernel_would_refuse_the_filter() {
        let base = ["CAP_CHOWN", "CAP_KILL"];
        let raised = ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_SETPCAP"];
        // (capabilities, no_new_privs, filter, want process caps, want restore)
        type Case<'a> = (
            &'a [&'a str],
            Option<bool>,
            bool,
            &'a [&'a str],
            Option<&'a [&'a str]>,
        );
        let cases: Vec<Case> = vec![
            // No filter: nothing to load, nothing raised.
            (&base, None, false, &base, None),
            // no_new_privs: any process may load a filter.
            (&base, Some(true), true, &base, None),
            // Neither: raised for the load, then back to the container's set.
            (&base, None, true, &raised, Some(&base)),
            (&base, Some(false), true, &raised, Some(&base)),
            // CAP_SYS_ADMIN held (e.g. added by the pod): enough as it is.
            (&["CAP_SYS_ADMIN"], None, true, &["CAP_SYS_ADMIN"], None),
            // All dropped: raised from nothing, back to nothing.
            (
                &[],
                None,
                true,
                &["CAP_SYS_ADMIN", "CAP_SETPCAP"],
                Some(&[]),
            ),
        ];
        for (have, nnp, with_filter, want, restore) in cases {
            let s = spec(container_process(caps(have), nnp), with_filter.then(filter));
            let got = plan(&s, vec!["true".into()], false).unwrap();
            let c = got.process.capabilities().clone().unwrap();
            let label = format!("{have:?} nnp={nnp:?} filter={with_filter}");
            assert_eq!(c.bounding().clone().unwrap(), set(want), "{label}");
            assert_eq!(c.effective().clone().unwrap(), set(want), "{label}");
            assert_eq!(c.permitted().clone().unwrap(), set(want), "{label}");
            assert_eq!(got.seccomp.is_some(), with_filter, "{label}");
            let got_restore = got.seccomp.and_then(|l| l.restore);
            match restore {
                None => assert_eq!(got_restore, None, "{label}"),
                Some(names) => {
                    let r = got_restore.expect(&label);
                    assert_eq!(r.bounding().clone().unwrap(), set(names), "{label}");
                    assert_eq!(r.effective().clone().unwrap(), set(names), "{label}");
                    assert_eq!(r.permitted().clone().unwrap(), set(names), "{label}");
                }
            }
        }
    }

    /// The filter handed on is the container's, byte for byte.
    #[test]
    fn the_filter_is_the_containers() {
        let s = spec(container_process(caps(&[]), Some(true)), Some(filter()));
        let got = plan(&s, vec!["true".into()], false).unwrap();
        let want = s.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(got.seccomp.unwrap().filter, want);
    }

    #[test]
    fn bad_input_is_refused() {
        let s = spec(container_process(caps(&[]), None), Some(filter()));
        assert_eq!(plan(&s, vec![], false), Err(ExecPlanError::NoCommand));
        assert_eq!(
            plan(&s, vec![String::new()], true),
            Err(ExecPlanError::NoCommand)
        );
        let notify = json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock",
                            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
        let s = spec(container_process(caps(&[]), None), Some(notify));
        assert_eq!(
            plan(&s, vec!["true".into()], false),
            Err(ExecPlanError::NotifyFilter)
        );
        let mut s = spec(container_process(caps(&[]), None), None);
        s.set_process(None);
        assert_eq!(
            plan(&s, vec!["true".into()], false),
            Err(ExecPlanError::NoProcess)
        );
    }
}
