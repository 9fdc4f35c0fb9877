//! A recording [`PodNetwork`] for tests of code that uses the network: it hands out
//! addresses from a CIDR, remembers every call, and fails when told to.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use super::{Error, Ipv4Net, PodNet, PodNetRequest, PodNetwork, Result};

/// A call the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Setup(PodNetRequest),
    Teardown(String),
    List,
}

/// Which operation a scripted failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Setup,
    Teardown,
    List,
}

#[derive(Debug)]
pub struct FakeNetwork {
    cidr: Ipv4Net,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    pods: BTreeMap<String, PodNet>,
    failures: BTreeMap<Op, VecDeque<String>>,
}

impl FakeNetwork {
    pub fn new(cidr: Ipv4Net) -> FakeNetwork {
        FakeNetwork {
            cidr,
            state: Mutex::new(State::default()),
        }
    }

    /// The next call of `op` fails with `message` (queued: several calls fail in turn).
    pub fn fail_next(&self, op: Op, message: &str) {
        let mut s = self.state.lock().expect("fake network lock");
        s.failures
            .entry(op)
            .or_default()
            .push_back(message.to_string());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("fake network lock").calls.clone()
    }

    /// Pretends a network exists, as if left by an agent before a restart.
    pub fn insert(&self, pod: PodNet) {
        let mut s = self.state.lock().expect("fake network lock");
        s.pods.insert(pod.pod_uid.clone(), pod);
    }

    fn record(&self, call: Call, op: Op) -> Result<std::sync::MutexGuard<'_, State>> {
        let mut s = self.state.lock().expect("fake network lock");
        s.calls.push(call);
        if let Some(msg) = s.failures.get_mut(&op).and_then(|q| q.pop_front()) {
            return Err(Error::Injected(msg));
        }
        Ok(s)
    }
}

impl PodNetwork for FakeNetwork {
    async fn setup(&self, req: &PodNetRequest) -> Result<PodNet> {
        let mut s = self.record(Call::Setup(req.clone()), Op::Setup)?;
        if let Some(existing) = s.pods.get(&req.pod_uid) {
            return Ok(existing.clone());
        }
        let ip = self
            .cidr
            .pod_addresses()
            .find(|ip| s.pods.values().all(|p| p.ip != *ip))
            .ok_or(Error::Exhausted(self.cidr))?;
        let pod = PodNet {
            pod_uid: req.pod_uid.clone(),
            netns_path: PathBuf::from("/run/netns/fake").join(&req.pod_uid),
            ip,
            gateway: self.cidr.gateway(),
        };
        s.pods.insert(req.pod_uid.clone(), pod.clone());
        Ok(pod)
    }

    async fn teardown(&self, pod_uid: &str) -> Result<()> {
        let mut s = self.record(Call::Teardown(pod_uid.to_string()), Op::Teardown)?;
        s.pods.remove(pod_uid);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<PodNet>> {
        let s = self.record(Call::List, Op::List)?;
        Ok(s.pods.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uid: &str) -> PodNetRequest {
        PodNetRequest {
            pod_uid: uid.into(),
            namespace: "ns".into(),
            name: uid.into(),
            host_ports: vec![],
        }
    }

    #[tokio::test]
    async fn records_allocates_and_fails_on_demand() {
        let fake = FakeNetwork::new("10.1.0.0/24".parse().unwrap());
        let a = fake.setup(&req("a")).await.unwrap();
        let b = fake.setup(&req("b")).await.unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(fake.setup(&req("a")).await.unwrap(), a);
        fake.fail_next(Op::Teardown, "busy");
        assert!(matches!(fake.teardown("a").await, Err(Error::Injected(m)) if m == "busy"));
        fake.teardown("a").await.unwrap();
        assert_eq!(fake.list().await.unwrap(), vec![b]);
        assert_eq!(
            fake.calls(),
            vec![
                Call::Setup(req("a")),
                Call::Setup(req("b")),
                Call::Setup(req("a")),
                Call::Teardown("a".into()),
                Call::Teardown("a".into()),
                Call::List,
            ]
        );
    }
}
