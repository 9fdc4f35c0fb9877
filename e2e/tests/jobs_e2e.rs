//! The Job and CronJob controllers against `kith up`, through kubectl 1.30 and 1.33: a Job
//! whose pod succeeds completes (`kubectl wait --for=condition=complete` returns), a Job
//! with `backoffLimit: 1` fails with `BackoffLimitExceeded` after two failed pods (the
//! second created after the 10 s retry back-off), and a CronJob on `*/1 * * * *` creates
//! its Job at the next minute.
//!
//! kith has no agent yet, so pods never really run: the tests play the agent's part by
//! writing the pod's final status (phase Succeeded/Failed and a terminated container)
//! through the status subresource with `kubectl patch --subresource=status`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kith_e2e::{ensure_contains, kubectl_tests, Cluster, Kubectl};

kubectl_tests!(
    job_completes_then_job_exhausts_backoff_limit,
    cronjob_creates_a_job_at_the_next_minute,
);

/// Names of the pods a Job created (selected by the label the Job controller sets).
async fn job_pods(c: &Cluster, k: Kubectl, ns: &str, job: &str) -> Result<Vec<String>> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let out = c
        .kubectl_ok(
            k,
            &[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                &selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
        .await?;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

/// Polls until the Job has a pod not in `seen`, and returns its name.
async fn new_pod(
    c: &Cluster,
    k: Kubectl,
    ns: &str,
    job: &str,
    seen: &[String],
    within: Duration,
) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let pods = job_pods(c, k, ns, job).await?;
        if let Some(p) = pods.into_iter().find(|p| !seen.contains(p)) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("job {ns}/{job} created no new pod within {within:?} (had {seen:?})");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What the agent would report when the pod's only container exits with `code`.
async fn finish_pod(c: &Cluster, k: Kubectl, ns: &str, pod: &str, code: i32) -> Result<()> {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let reason = if code == 0 { "Completed" } else { "Error" };
    let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let status = format!(
        r#"{{"status":{{"phase":"{phase}","containerStatuses":[{{"name":"main","image":"localhost:5000/busybox:1.36","imageID":"","ready":false,"restartCount":0,"started":false,"state":{{"terminated":{{"exitCode":{code},"reason":"{reason}","startedAt":"{now}","finishedAt":"{now}"}}}}}}]}}}}"#
    );
    c.kubectl_ok(
        k,
        &[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    )
    .await?;
    Ok(())
}

fn job_yaml(name: &str, backoff_limit: u32) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  backoffLimit: {backoff_limit}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: localhost:5000/busybox:1.36\n        command: [sh, -c, 'echo done']\n"
    )
}

async fn get(c: &Cluster, k: Kubectl, ns: &str, what: &str, path: &str) -> Result<String> {
    let jsonpath = format!("jsonpath={path}");
    c.kubectl_ok(k, &["get", what, "-n", ns, "-o", &jsonpath])
        .await
}

async fn job_completes_then_job_exhausts_backoff_limit(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("jobs").await?;

    // A Job whose pod succeeds completes.
    c.apply_yaml(k, Some(&ns), &job_yaml("once", 6)).await?;
    let pod = new_pod(c, k, &ns, "once", &[], Duration::from_secs(30)).await?;
    if !pod.starts_with("once-") {
        bail!("job pod should be named once-<random>, got {pod}");
    }
    let labels = get(c, k, &ns, &format!("pod/{pod}"), "{.metadata.labels}").await?;
    ensure_contains(&labels, "\"job-name\":\"once\"")?;
    ensure_contains(&labels, "batch.kubernetes.io/controller-uid")?;
    let owner = get(
        c,
        k,
        &ns,
        &format!("pod/{pod}"),
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].controller}",
    )
    .await?;
    if owner != "Job/true" {
        bail!("pod {pod} should be controlled by its Job, owner is {owner:?}");
    }
    finish_pod(c, k, &ns, &pod, 0).await?;
    c.kubectl_ok(
        k,
        &[
            "wait",
            "--for=condition=complete",
            "job/once",
            "-n",
            &ns,
            "--timeout=30s",
        ],
    )
    .await?;
    let counts = get(
        c,
        k,
        &ns,
        "job/once",
        "{.status.succeeded}/{.status.failed}/{.status.completionTime}",
    )
    .await?;
    if !counts.starts_with("1//") || counts.len() <= 3 {
        bail!("complete job should report succeeded 1 and a completionTime, got {counts:?}");
    }
    let events = c.kubectl_ok(k, &["get", "events", "-n", &ns]).await?;
    ensure_contains(&events, "SuccessfulCreate")?;
    ensure_contains(&events, &format!("Created pod: {pod}"))?;
    ensure_contains(&events, "Job completed")?;
    let table = c.kubectl_ok(k, &["get", "job", "once", "-n", &ns]).await?;
    ensure_contains(&table, "1/1")?;

    // backoffLimit 1: the second failed pod fails the Job. The replacement of the first
    // comes after the 10 s retry back-off.
    c.apply_yaml(k, Some(&ns), &job_yaml("flaky", 1)).await?;
    let first = new_pod(c, k, &ns, "flaky", &[], Duration::from_secs(30)).await?;
    finish_pod(c, k, &ns, &first, 1).await?;
    let failed_at = Instant::now();
    let second = new_pod(
        c,
        k,
        &ns,
        "flaky",
        std::slice::from_ref(&first),
        Duration::from_secs(40),
    )
    .await?;
    let waited = failed_at.elapsed();
    if waited < Duration::from_secs(8) {
        bail!("the replacement pod came {waited:?} after the failure, before the 10 s back-off");
    }
    finish_pod(c, k, &ns, &second, 1).await?;
    c.kubectl_ok(
        k,
        &[
            "wait",
            "--for=condition=failed",
            "job/flaky",
            "-n",
            &ns,
            "--timeout=30s",
        ],
    )
    .await?;
    let reason = get(
        c,
        k,
        &ns,
        "job/flaky",
        "{.status.conditions[?(@.type==\"Failed\")].reason}",
    )
    .await?;
    if reason != "BackoffLimitExceeded" {
        bail!("failed job should say BackoffLimitExceeded, got {reason:?}");
    }
    let failed = get(c, k, &ns, "job/flaky", "{.status.failed}").await?;
    if failed != "2" {
        bail!("failed job should count 2 failed pods, got {failed:?}");
    }
    let describe = c
        .kubectl_ok(k, &["describe", "job", "flaky", "-n", &ns])
        .await?;
    ensure_contains(&describe, "BackoffLimitExceeded")?;
    ensure_contains(&describe, "Job has reached the specified backoff limit")?;
    Ok(())
}

async fn cronjob_creates_a_job_at_the_next_minute(c: &Cluster, k: Kubectl) -> Result<()> {
    let ns = c.namespace("cron").await?;
    let yaml = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: tick\nspec:\n  schedule: '*/1 * * * *'\n  jobTemplate:\n    metadata:\n      labels:\n        app: tick\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers:\n          - name: main\n            image: localhost:5000/busybox:1.36\n            command: [date]\n";
    c.apply_yaml(k, Some(&ns), yaml).await?;

    // The first schedule time is the next whole minute: at most 60 s away.
    let deadline = Instant::now() + Duration::from_secs(75);
    let job = loop {
        let names = c
            .kubectl_ok(
                k,
                &[
                    "get",
                    "jobs",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ],
            )
            .await?;
        if let Some(name) = names.split_whitespace().next() {
            break name.to_string();
        }
        if Instant::now() > deadline {
            bail!("cronjob tick created no job within 75 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let minutes = job.strip_prefix("tick-").unwrap_or_default();
    if minutes.is_empty() || !minutes.chars().all(|ch| ch.is_ascii_digit()) {
        bail!("cronjob's job should be named tick-<minutes since epoch>, got {job}");
    }
    let owner = get(
        c,
        k,
        &ns,
        &format!("job/{job}"),
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    )
    .await?;
    if owner != "CronJob/tick" {
        bail!("job {job} should be controlled by CronJob tick, owner is {owner:?}");
    }
    let labels = get(c, k, &ns, &format!("job/{job}"), "{.metadata.labels.app}").await?;
    if labels != "tick" {
        bail!("job {job} should carry the template's labels, app={labels:?}");
    }
    // The Job controller takes it from there.
    new_pod(c, k, &ns, &job, &[], Duration::from_secs(30)).await?;

    // Status and the event land right after the create.
    let wait_until = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(
            c,
            k,
            &ns,
            "cronjob/tick",
            "{.status.active[0].name}|{.status.lastScheduleTime}",
        )
        .await?;
        let events = c.kubectl_ok(k, &["get", "events", "-n", &ns]).await?;
        let created = format!("Created job {job}");
        if status.starts_with(&format!("{job}|20")) && events.contains(&created) {
            break;
        }
        if Instant::now() > wait_until {
            ensure_contains(&status, &format!("{job}|20"))?;
            ensure_contains(&events, &created)?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let table = c
        .kubectl_ok(k, &["get", "cronjob", "tick", "-n", &ns])
        .await?;
    ensure_contains(&table, "*/1 * * * *")?;
    Ok(())
}
