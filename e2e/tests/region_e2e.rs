//! A region of real control boxes, each a `kith control` process on its own network
//! namespace host, driven with kubectl 1.33 as a user would:
//! - three boxes form a region (one founds it, two join through it with a join token);
//! - two agents (`kith agent`, real containers), each on a namespace host of its own, join
//!   through a follower (they pull from a registry on the test's side of the lab);
//! - the `kubernetes` Service's endpoints name all three boxes;
//! - a Deployment applied through a follower is seen on every box, the controllers (running
//!   on the leader) make its ReplicaSet and pods, and the agents run them; the pods keep
//!   running, never restarted, through everything below;
//! - kill -9 the leader: the survivors elect another and take writes again; the killed box
//!   restarts and catches up;
//! - a box cut off from the other two refuses writes with a 503 naming the cause, while the
//!   majority keeps working; healed, it converges;
//! - a 4th and 5th box join while a writer keeps writing (the 4th with a join token made
//!   on another box); one leaves; nothing acknowledged is lost on any box;
//! - a box that lost its disk comes back as a new member; the old one is removed by id.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kith_agent::image::testing::{ImageOptions, TestRegistry};
use kith_e2e::agent::{AgentSpec, RemoteAgent};
use kith_e2e::region::Region;
use kith_e2e::{AgentOptions, Kubectl};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

const K: Kubectl = Kubectl::V1_33;

fn deployment(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
        command: ["sh", "-c", "exec sleep 3600"]
"#
    )
}

/// `kubectl get pods -l app=web` as (name, phase, restarts) rows.
async fn web_pods(region: &Region, host: &str) -> Result<Vec<(String, String, String)>> {
    let out = region
        .kubectl_ok(
            host,
            K,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
            ],
        )
        .await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_string(),
                f.next()?.to_string(),
                f.next().unwrap_or("").to_string(),
            ))
        })
        .collect())
}

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), name.to_string())].into()),
        ..Default::default()
    }
}

/// Create ConfigMap `name` through the box on `host`; the error's text if refused.
async fn create_on(region: &Region, host: &str, name: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(region.client(host).await?, "default");
    api.create(&PostParams::default(), &cm(name))
        .await
        .map(|_| ())
        .with_context(|| format!("create {name} on {host}"))
}

/// Names of the ConfigMaps a box lists (a linearizable list).
async fn names_on(region: &Region, host: &str) -> Result<BTreeSet<String>> {
    let api: Api<ConfigMap> = Api::namespaced(region.client(host).await?, "default");
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect())
}

/// Wait until the box on `host` lists every name in `want`.
async fn converged(region: &Region, host: &str, want: &BTreeSet<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match names_on(region, host).await {
            Ok(have) if want.is_subset(&have) => return Ok(()),
            Ok(have) if Instant::now() > deadline => {
                bail!(
                    "{host} misses {:?}",
                    want.difference(&have).collect::<Vec<_>>()
                )
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_survives_losing_a_minority() {
    // The agents' pod network: a /16 no other test holds, the region's cluster CIDR.
    let a1 = AgentOptions::unique("ra1");
    let a2 = AgentOptions::unique("ra2");
    let cidr = a1.cluster_cidr.clone();
    let mut region = Region::new(
        "reg",
        &["c1", "c2", "c3", "c4", "c5", "a1", "a2"],
        &["--cluster-cidr", &cidr],
    )
    .expect("lab");
    let mut agents = Vec::new();
    let result = run(&mut region, [a1, a2], &mut agents).await;
    if let Err(e) = result {
        // The lab prints every box's log, the agents theirs, as they drop in the panic.
        panic!("{e:#}");
    }
}

async fn run(
    region: &mut Region,
    agent_opts: [AgentOptions; 2],
    agents: &mut Vec<RemoteAgent>,
) -> Result<()> {
    // The registry listens on the test's side of the lab, where the agents' hosts reach it.
    let registry = TestRegistry::start_on(region.lab.root_addr())?;
    let insecure = [registry.address().to_string()];
    registry
        .push_busybox("busybox", "1", ImageOptions::default())
        .await?;
    let image = registry.image("busybox", "1");
    region.found("c1").await?;
    region.join("c2", "c1").await?;
    region.join("c3", "c1").await?;
    let leader = region.leader(&[]).await?;
    ensure!(
        region.metric(&leader, "kith_raft_members").await? == 3.0,
        "three members"
    );
    let followers: Vec<String> = ["c1", "c2", "c3"]
        .iter()
        .map(|s| s.to_string())
        .filter(|h| *h != leader)
        .collect();
    let (f1, f2) = (followers[0].clone(), followers[1].clone());

    // Two agents, each on a host of its own, join through a follower.
    let token = region.token()?;
    for (a, host) in agent_opts.iter().zip(["a1", "a2"]) {
        let dir = region.lab.dir().join(format!("agent-{}", a.node_name));
        let log = region.lab.dir().join(format!("agent-{}.log", a.node_name));
        // Every box, a follower first: the agent fails over when its box goes.
        let servers: Vec<String> = [f2.as_str(), f1.as_str(), leader.as_str()]
            .iter()
            .map(|h| region.url(h))
            .collect::<Result<_>>()?;
        let spec = AgentSpec {
            servers: &servers,
            token: &token,
            dir: &dir,
            opts: a,
            node_ip: None,
            // The kubelet's port: each agent has a host of its own.
            node_port: 10250,
            insecure_registries: &insecure,
            netns: Some(region.lab.netns(host)?),
        };
        agents.push(RemoteAgent::start(&spec, &log)?);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = region
            .kubectl_ok(
                &f1,
                K,
                &[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ],
            )
            .await?;
        if ready.lines().filter(|l| *l == "True").count() == 2 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agents' nodes are not Ready: {ready:?}\n{}",
            agents
                .iter()
                .map(|a| a.log())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The `kubernetes` Service names every box serving the API, from their leases.
    let boxes: BTreeSet<String> = ["c1", "c2", "c3"]
        .iter()
        .map(|h| Ok(region.lab.addr(h)?.to_string()))
        .collect::<Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let ips = region
            .kubectl_ok(
                &f2,
                K,
                &[
                    "get",
                    "endpoints",
                    "kubernetes",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ],
            )
            .await?;
        let ips: BTreeSet<String> = ips.split_whitespace().map(str::to_string).collect();
        if ips == boxes {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "kubernetes endpoints {ips:?}, want every box {boxes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A Deployment through a follower; another follower shows what the leader's
    // controllers made of it, and the agents run its pods.
    let manifest = region.lab.dir().join("web.yaml");
    std::fs::write(&manifest, deployment(&image))?;
    let path = manifest.display().to_string();
    region.kubectl_ok(&f1, K, &["apply", "-f", &path]).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let running = loop {
        let pods = web_pods(region, &f2).await?;
        if pods.len() == 2 && pods.iter().all(|p| p.1 == "Running") {
            break pods;
        }
        ensure!(
            Instant::now() < deadline,
            "the deployment's pods are not Running on {f2}: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let rs = region
        .kubectl_ok(&f2, K, &["get", "rs", "-l", "app=web", "-o", "name"])
        .await?;
    ensure!(rs.lines().count() == 1, "one ReplicaSet: {rs:?}");

    let mut written: BTreeSet<String> = BTreeSet::new();
    for i in 0..5 {
        let name = format!("before-kill-{i}");
        create_on(region, &f1, &name).await?;
        written.insert(name);
    }

    // kill -9 the leader: a survivor takes writes again.
    region.kill9(&leader)?;
    let killed_at = Instant::now();
    let mut n = 0;
    loop {
        let name = format!("after-kill-{n}");
        n += 1;
        match create_on(region, &f1, &name).await {
            Ok(()) => {
                written.insert(name);
                break;
            }
            Err(e) => {
                ensure!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no write accepted 30 s after the leader died: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "first write after kill -9 of the leader: {:?}",
        killed_at.elapsed()
    );
    let new_leader = region.leader(&[&leader]).await?;
    ensure!(new_leader != leader, "a new leader");
    for i in 0..5 {
        let name = format!("while-down-{i}");
        create_on(region, &f2, &name).await?;
        written.insert(name);
    }
    // The killed box restarts and catches up.
    region.restart(&leader).await?;
    converged(region, &leader, &written).await?;
    let old_leader = leader;

    // Cut one follower off from the other two boxes.
    let leader = region.leader(&[]).await?;
    let cut = ["c1", "c2", "c3"]
        .into_iter()
        .find(|h| *h != leader)
        .context("a follower")?
        .to_string();
    let others: Vec<&str> = ["c1", "c2", "c3"]
        .into_iter()
        .filter(|h| *h != cut)
        .collect();
    region.lab.partition(&cut, &others)?;
    let started = Instant::now();
    let refused = region
        .kubectl(&cut, K, &["create", "configmap", "on-the-minority"])
        .await?;
    ensure!(!refused.status.success(), "a minority box accepted a write");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(stderr.contains("leader"), "the refusal says why: {stderr}");
    eprintln!(
        "minority refusal after {:?}: {}",
        started.elapsed(),
        stderr.trim()
    );
    for i in 0..5 {
        let name = format!("during-partition-{i}");
        create_on(region, others[0], &name).await?;
        written.insert(name);
    }
    region.lab.heal(&cut)?;
    converged(region, &cut, &written).await?;
    ensure!(
        !names_on(region, &cut).await?.contains("on-the-minority"),
        "the refused write never appears"
    );

    // Two more boxes join while a writer keeps writing; then one leaves.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = region.client(&leader).await?;
        tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(client, "default");
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("during-join-{i}");
                i += 1;
                match api.create(&PostParams::default(), &cm(&name)).await {
                    Ok(_) => acked.push(name),
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        })
    };
    // A token made on one box is good on another: tokens live in the replicated store.
    let token = region.create_token(&cut)?;
    region.join_with("c4", &old_leader, &token).await?;
    region.join("c5", &cut).await?;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await?;
    eprintln!(
        "during the joins: {} writes acknowledged, {failed} refused",
        acked.len()
    );
    ensure!(
        acked.len() >= 3 && failed == 0,
        "writes went on during the joins: {} acknowledged, {failed} refused",
        acked.len()
    );
    written.extend(acked);
    let leader = region.leader(&[]).await?;
    ensure!(
        region.metric(&leader, "kith_raft_members").await? == 5.0,
        "five members"
    );
    for host in ["c4", "c5"] {
        converged(region, host, &written).await?;
    }

    region.leave("c4")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.running("c4")? {
        ensure!(Instant::now() < deadline, "c4 still runs after leaving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = region.leader(&["c4"]).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.metric(&leader, "kith_raft_members").await? != 4.0 {
        ensure!(Instant::now() < deadline, "c4 is still a member");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    create_on(region, "c5", "after-leave").await?;
    written.insert("after-leave".into());
    for host in ["c1", "c2", "c3", "c5"] {
        converged(region, host, &written).await?;
    }
    // c5 loses its disk: started again on an empty directory it joins as a new member, and
    // the old member is removed by id from another box.
    let c5_dir = region.data_dir("c5")?;
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c5_dir.join("region.json"))?)?;
    let old_id = record["nodeId"].as_u64().context("nodeId")?;
    region.kill9("c5")?;
    std::fs::remove_dir_all(&c5_dir)?;
    std::fs::create_dir_all(&c5_dir)?;
    region.restart("c5").await?;
    let c1_dir = region.data_dir("c1")?;
    let kith = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(kith_e2e::kith_bin())
            .args(args)
            .arg("--data-dir")
            .arg(&c1_dir)
            .output()?;
        ensure!(
            out.status.success(),
            "kith {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let before = kith(&["control", "members"])?;
    ensure!(before.contains(&old_id.to_string()), "{before}");
    ensure!(
        before.lines().count() == 1 + 5,
        "4 boxes + the lost one: {before}"
    );
    kith(&["control", "leave", "--node-id", &old_id.to_string()])?;
    let after = kith(&["control", "members"])?;
    ensure!(
        !after.contains(&old_id.to_string()) && after.lines().count() == 1 + 4,
        "{after}"
    );
    create_on(region, "c5", "after-disk-loss").await?;
    written.insert("after-disk-loss".into());
    converged(region, "c5", &written).await?;

    // The same pods still run, never restarted.
    let after = web_pods(region, "c5").await?;
    let same: Vec<(String, String, String)> = running
        .iter()
        .map(|(n, _, _)| (n.clone(), "Running".to_string(), "0".to_string()))
        .collect();
    ensure!(after == same, "pods before {running:?}, after {after:?}");
    Ok(())
}
