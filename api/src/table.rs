//! `meta.k8s.io/v1` Tables: the server-side printing `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! ```text
//!  objects ──row(kind, obj, now)──▶ cells ─┐
//!  kind ──columns(kind)──▶ definitions ────┴─▶ table(...) ─▶ {"kind":"Table", ...}
//! ```
//!
//! Columns and cells follow what kube-apiserver prints for each kind, so `kubectl get`
//! against kith reads like against any cluster. The server always sends every column,
//! priority 1 ones included; kubectl shows those only with `-o wide`. Objects are read as
//! JSON (not typed) because they come straight from the store, already defaulted.

use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Map, Value};

use crate::kinds::Kind;

/// What each row carries besides its cells (`?includeObject=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object: cells only.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (kubectl's default; it needs
    /// the labels for `--show-labels` and `-L`).
    #[default]
    Metadata,
    /// The whole object.
    Object,
}

/// An `includeObject` value that is none of `None`, `Metadata`, `Object`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("includeObject must be one of None, Metadata, Object, not {0:?}")]
pub struct BadIncludeObject(pub String);

impl FromStr for IncludeObject {
    type Err = BadIncludeObject;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "None" => Ok(IncludeObject::None),
            "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(BadIncludeObject(other.to_string())),
        }
    }
}

/// A whole Table for `objects` of `kind`. `list_meta` is the list's metadata
/// (`resourceVersion`, `continue`, ...), passed through unchanged.
pub fn table(
    kind: &Kind,
    objects: &[Value],
    include_object: IncludeObject,
    list_meta: Value,
    now: Timestamp,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut r = Map::new();
            r.insert("cells".into(), Value::Array(row(kind, object, now)));
            if let Some(conditions) = row_conditions(kind, object) {
                r.insert("conditions".into(), conditions);
            }
            match include_object {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    r.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                        }),
                    );
                }
                IncludeObject::Object => {
                    r.insert("object".into(), object.clone());
                }
            }
            Value::Object(r)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns(kind),
        "rows": rows,
    })
}

/// `TableColumnDefinition`s for `kind`, in printing order.
pub fn columns(kind: &Kind) -> Vec<Value> {
    spec(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect()
}

/// The cells of one object's row, one per entry of [`columns`].
pub fn row(kind: &Kind, object: &Value, now: Timestamp) -> Vec<Value> {
    let o = Obj(object);
    match printer(kind) {
        Printer::Pod => pod_cells(o, now),
        Printer::Deployment => {
            let replicas = o.int_or(&["spec", "replicas"], 1);
            let (names, images) = containers(o.at(&["spec", "template", "spec"]));
            vec![
                o.name(),
                json!(format!(
                    "{}/{}",
                    o.int(&["status", "readyReplicas"]),
                    replicas
                )),
                json!(o.int(&["status", "updatedReplicas"])),
                json!(o.int(&["status", "availableReplicas"])),
                o.age(now),
                names,
                images,
                label_selector(o.at(&["spec", "selector"])),
            ]
        }
        Printer::ReplicaSet => {
            let (names, images) = containers(o.at(&["spec", "template", "spec"]));
            vec![
                o.name(),
                json!(o.int_or(&["spec", "replicas"], 1)),
                json!(o.int(&["status", "replicas"])),
                json!(o.int(&["status", "readyReplicas"])),
                o.age(now),
                names,
                images,
                label_selector(o.at(&["spec", "selector"])),
            ]
        }
        Printer::DaemonSet => {
            let (names, images) = containers(o.at(&["spec", "template", "spec"]));
            vec![
                o.name(),
                json!(o.int(&["status", "desiredNumberScheduled"])),
                json!(o.int(&["status", "currentNumberScheduled"])),
                json!(o.int(&["status", "numberReady"])),
                json!(o.int(&["status", "updatedNumberScheduled"])),
                json!(o.int(&["status", "numberAvailable"])),
                json!(key_values(o.at(&[
                    "spec",
                    "template",
                    "spec",
                    "nodeSelector"
                ]))),
                o.age(now),
                names,
                images,
                label_selector(o.at(&["spec", "selector"])),
            ]
        }
        Printer::StatefulSet => {
            let (names, images) = containers(o.at(&["spec", "template", "spec"]));
            vec![
                o.name(),
                json!(format!(
                    "{}/{}",
                    o.int(&["status", "readyReplicas"]),
                    o.int_or(&["spec", "replicas"], 1)
                )),
                o.age(now),
                names,
                images,
            ]
        }
        Printer::ControllerRevision => vec![
            o.name(),
            json!(controller_name(o)),
            json!(o.int(&["revision"])),
            o.age(now),
        ],
        Printer::Job => job_cells(o, now),
        Printer::CronJob => {
            let (names, images) =
                containers(o.at(&["spec", "jobTemplate", "spec", "template", "spec"]));
            let last = match o.time(&["status", "lastScheduleTime"]) {
                Some(t) => human_duration(now.duration_since(t)),
                None => "<none>".into(),
            };
            vec![
                o.name(),
                json!(o.str(&["spec", "schedule"])),
                json!(or_none(o.str(&["spec", "timeZone"]))),
                json!(o.bool(&["spec", "suspend"])),
                json!(o.len(&["status", "active"])),
                json!(last),
                o.age(now),
                names,
                images,
                label_selector(o.at(&["spec", "jobTemplate", "spec", "selector"])),
            ]
        }
        Printer::Service => service_cells(o, now),
        Printer::Node => node_cells(o, now),
        Printer::Namespace => vec![o.name(), json!(o.str(&["status", "phase"])), o.age(now)],
        Printer::ConfigMap => {
            vec![
                o.name(),
                json!(o.len(&["data"]) + o.len(&["binaryData"])),
                o.age(now),
            ]
        }
        Printer::Secret => vec![
            o.name(),
            json!(o.str(&["type"])),
            json!(o.len(&["data"])),
            o.age(now),
        ],
        Printer::ServiceAccount => vec![o.name(), json!(o.len(&["secrets"])), o.age(now)],
        Printer::Event => event_cells(o, now, false),
        Printer::EventsV1 => event_cells(o, now, true),
        Printer::Endpoints => vec![o.name(), json!(endpoints(o)), o.age(now)],
        Printer::EndpointSlice => vec![
            o.name(),
            json!(o.str(&["addressType"])),
            json!(slice_ports(o)),
            json!(slice_endpoints(o)),
            o.age(now),
        ],
        Printer::Lease => vec![
            o.name(),
            json!(o.str(&["spec", "holderIdentity"])),
            o.age(now),
        ],
        Printer::PersistentVolumeClaim => pvc_cells(o, now),
        Printer::Default => vec![o.name(), o.age(now)],
    }
}

/// Which of kube-apiserver's printers a kind uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Printer {
    Pod,
    Deployment,
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    ControllerRevision,
    Job,
    CronJob,
    Service,
    Node,
    Namespace,
    ConfigMap,
    Secret,
    ServiceAccount,
    Event,
    EventsV1,
    Endpoints,
    EndpointSlice,
    Lease,
    PersistentVolumeClaim,
    Default,
}

fn printer(kind: &Kind) -> Printer {
    match (kind.group, kind.kind) {
        ("", "Pod") => Printer::Pod,
        ("apps", "Deployment") => Printer::Deployment,
        ("apps", "ReplicaSet") => Printer::ReplicaSet,
        ("apps", "DaemonSet") => Printer::DaemonSet,
        ("apps", "StatefulSet") => Printer::StatefulSet,
        ("apps", "ControllerRevision") => Printer::ControllerRevision,
        ("batch", "Job") => Printer::Job,
        ("batch", "CronJob") => Printer::CronJob,
        ("", "Service") => Printer::Service,
        ("", "Node") => Printer::Node,
        ("", "Namespace") => Printer::Namespace,
        ("", "ConfigMap") => Printer::ConfigMap,
        ("", "Secret") => Printer::Secret,
        ("", "ServiceAccount") => Printer::ServiceAccount,
        ("", "Event") => Printer::Event,
        ("events.k8s.io", "Event") => Printer::EventsV1,
        ("", "Endpoints") => Printer::Endpoints,
        ("discovery.k8s.io", "EndpointSlice") => Printer::EndpointSlice,
        ("coordination.k8s.io", "Lease") => Printer::Lease,
        ("", "PersistentVolumeClaim") => Printer::PersistentVolumeClaim,
        _ => Printer::Default,
    }
}

/// One column definition.
struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty: "string",
        format: "",
        description,
        priority: 1,
    }
}

const NAME: Col = Col {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace.",
    priority: 0,
};
const AGE: Col = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);
const CONTAINERS: Col = wide("Containers", "Names of each container in the template.");
const IMAGES: Col = wide(
    "Images",
    "Images referenced by each container in the template.",
);
const SELECTOR: Col = wide(
    "Selector",
    "Label selector for the objects this one manages.",
);

fn spec(kind: &Kind) -> Vec<Col> {
    match printer(kind) {
        Printer::Pod => vec![
            NAME,
            col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", "The aggregate status of the containers in this pod."),
            col(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            wide("IP", "IP address allocated to the pod."),
            wide("Node", "The node the pod is bound to."),
            wide("Nominated Node", "The node the scheduler nominated for this pod while preempting others."),
            wide("Readiness Gates", "Readiness gates of the pod that are true, out of all of them."),
        ],
        Printer::Deployment => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Printer::ReplicaSet => vec![
            NAME,
            col("Desired", "integer", "Replicas is the number of desired replicas."),
            col("Current", "integer", "Replicas is the most recently observed number of replicas."),
            col("Ready", "integer", "The number of ready replicas for this replica set."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Printer::DaemonSet => vec![
            NAME,
            col("Desired", "integer", "The total number of nodes that should be running the daemon pod."),
            col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            col("Ready", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod."),
            col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Printer::StatefulSet => vec![
            NAME,
            col("Ready", "string", "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        Printer::ControllerRevision => vec![
            NAME,
            col("Controller", "string", "Controller of the object."),
            col("Revision", "string", "Revision indicates the revision of the state represented by Data."),
            AGE,
        ],
        Printer::Job => vec![
            NAME,
            col("Status", "string", "Status of the job."),
            col("Completions", "string", "The completion status of the job."),
            col("Duration", "string", "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Printer::CronJob => vec![
            NAME,
            col("Schedule", "string", "The schedule in Cron format."),
            col("Timezone", "string", "The time zone name for the given schedule."),
            col("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions."),
            col("Active", "integer", "A list of pointers to currently running jobs."),
            col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
            AGE,
            CONTAINERS,
            IMAGES,
            SELECTOR,
        ],
        Printer::Service => vec![
            NAME,
            col("Type", "string", "type determines how the Service is exposed."),
            col("Cluster-IP", "string", "clusterIP is the IP address of the service."),
            col("External-IP", "string", "The addresses the service is reachable at from outside the cluster."),
            col("Port(s)", "string", "The list of ports that are exposed by this service."),
            AGE,
            wide("Selector", "Route service traffic to pods with label keys and values matching this selector."),
        ],
        Printer::Node => vec![
            NAME,
            col("Status", "string", "The status of the node"),
            col("Roles", "string", "The roles of the node"),
            AGE,
            col("Version", "string", "Kubelet Version reported by the node."),
            wide("Internal-IP", "List of addresses reachable to the node."),
            wide("External-IP", "List of addresses reachable to the node."),
            wide("OS-Image", "OS Image reported by the node."),
            wide("Kernel-Version", "Kernel Version reported by the node."),
            wide("Container-Runtime", "ContainerRuntime Version reported by the node."),
        ],
        Printer::Namespace => vec![NAME, col("Status", "string", "The status of the namespace"), AGE],
        Printer::ConfigMap => vec![NAME, col("Data", "integer", "Number of keys in the config map."), AGE],
        Printer::Secret => vec![
            NAME,
            col("Type", "string", "The type of the secret"),
            col("Data", "integer", "Number of keys in the secret."),
            AGE,
        ],
        Printer::ServiceAccount => vec![NAME, col("Secrets", "integer", "Number of secrets of the service account."), AGE],
        Printer::Event | Printer::EventsV1 => vec![
            col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
            col("Type", "string", "Type of this event (Normal, Warning)."),
            col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", "string", "The object that this event is about."),
            wide("Subobject", "The part of the object this event is about, e.g. a container."),
            wide("Source", "The component reporting this event."),
            col("Message", "string", "A human-readable description of the status of this operation."),
            wide("First Seen", "The time at which the event was first recorded."),
            wide("Count", "The number of times this event has occurred."),
            Col { priority: 1, ..NAME },
        ],
        Printer::Endpoints => vec![NAME, col("Endpoints", "string", "The set of all endpoints is the union of all subsets."), AGE],
        Printer::EndpointSlice => vec![
            NAME,
            col("AddressType", "string", "The type of address carried by this EndpointSlice."),
            col("Ports", "string", "The network ports exposed by each endpoint in this slice."),
            col("Endpoints", "string", "A list of unique endpoints in this slice."),
            AGE,
        ],
        Printer::Lease => vec![NAME, col("Holder", "string", "The holder of the lease."), AGE],
        Printer::PersistentVolumeClaim => vec![
            NAME,
            col("Status", "string", "The phase the claim is in."),
            col("Volume", "string", "The binding reference to the PersistentVolume backing this claim."),
            col("Capacity", "string", "The actual resources of the underlying volume."),
            col("Access Modes", "string", "The actual access modes the volume backing the PVC has."),
            col("StorageClass", "string", "The name of the StorageClass required by the claim."),
            col("VolumeAttributesClass", "string", "The name of the VolumeAttributesClass the claim is using."),
            AGE,
            wide("VolumeMode", "What type of volume is required by the claim."),
        ],
        Printer::Default => vec![NAME, AGE],
    }
}

/// Kubernetes' human-readable approximation of a duration (apimachinery's
/// `duration.HumanDuration`): precise when short, coarser as it grows.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    // Up to a second of clock skew between machines still reads as "now".
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 2 * 60 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 8 * 24 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if days < 2 * 365 {
        return format!("{days}d");
    }
    let years = days / 365;
    if days < 8 * 365 {
        let dy = days % 365;
        return if dy == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{dy}d")
        };
    }
    format!("{years}y")
}

/// Read-only path access into an object; absent or mistyped fields read as empty.
#[derive(Clone, Copy)]
struct Obj<'a>(&'a Value);

impl<'a> Obj<'a> {
    fn at(self, path: &[&str]) -> Obj<'a> {
        let mut v = self.0;
        for key in path {
            v = v.get(key).unwrap_or(&Value::Null);
        }
        Obj(v)
    }

    fn str(self, path: &[&str]) -> &'a str {
        self.at(path).0.as_str().unwrap_or("")
    }

    fn int(self, path: &[&str]) -> i64 {
        self.int_or(path, 0)
    }

    fn int_or(self, path: &[&str], default: i64) -> i64 {
        self.at(path).0.as_i64().unwrap_or(default)
    }

    fn bool(self, path: &[&str]) -> bool {
        self.at(path).0.as_bool().unwrap_or(false)
    }

    fn has(self, path: &[&str]) -> bool {
        !self.at(path).0.is_null()
    }

    /// Number of entries of an array or map.
    fn len(self, path: &[&str]) -> usize {
        match self.at(path).0 {
            Value::Array(a) => a.len(),
            Value::Object(m) => m.len(),
            _ => 0,
        }
    }

    fn items(self, path: &[&str]) -> impl Iterator<Item = Obj<'a>> {
        self.at(path).0.as_array().into_iter().flatten().map(Obj)
    }

    fn time(self, path: &[&str]) -> Option<Timestamp> {
        self.str(path).parse().ok()
    }

    fn name(self) -> Value {
        json!(self.str(&["metadata", "name"]))
    }

    fn age(self, now: Timestamp) -> Value {
        json!(since(self.time(&["metadata", "creationTimestamp"]), now))
    }

    /// The status of the condition of `type_` ("True", "False", "Unknown"), or "".
    fn condition(self, type_: &str) -> &'a str {
        self.items(&["status", "conditions"])
            .find(|c| c.str(&["type"]) == type_)
            .map_or("", |c| c.str(&["status"]))
    }
}

/// The controlling owner as kube-apiserver prints it (`daemonset.apps/web`), or `<none>`.
fn controller_name(o: Obj<'_>) -> String {
    let Some(owner) = o
        .items(&["metadata", "ownerReferences"])
        .find(|r| r.bool(&["controller"]))
    else {
        return "<none>".into();
    };
    let group = owner
        .str(&["apiVersion"])
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    let kind = owner.str(&["kind"]).to_lowercase();
    let name = owner.str(&["name"]);
    if group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{group}/{name}")
    }
}

fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".into(),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

/// Row conditions kube-apiserver attaches: finished pods are marked Completed.
fn row_conditions(kind: &Kind, object: &Value) -> Option<Value> {
    if printer(kind) != Printer::Pod {
        return None;
    }
    let (reason, message) = match Obj(object).str(&["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

/// Pod cells: READY counts ready running containers, STATUS is the most telling reason
/// (an init step, a waiting or terminated container's reason, Terminating), RESTARTS
/// sums restarts and says how long ago the last one ended.
fn pod_cells(o: Obj<'_>, now: Timestamp) -> Vec<Value> {
    let total = o.len(&["spec", "containers"]);
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut note_restart = |c: Obj<'_>| {
        restarts += c.int(&["restartCount"]);
        if let Some(t) = c.time(&["lastState", "terminated", "finishedAt"]) {
            last_restart = Some(last_restart.map_or(t, |l| l.max(t)));
        }
    };
    let mut reason = match o.str(&["status", "reason"]) {
        "" => o.str(&["status", "phase"]).to_string(),
        r => r.to_string(),
    };

    let init_total = o.len(&["spec", "initContainers"]);
    let mut initializing = false;
    for (i, c) in o.items(&["status", "initContainerStatuses"]).enumerate() {
        note_restart(c);
        let terminated = c.at(&["state", "terminated"]);
        let waiting = c.str(&["state", "waiting", "reason"]);
        if terminated.has(&[]) && terminated.int(&["exitCode"]) == 0 {
            continue;
        }
        // A restartable init container (sidecar) that runs counts as done initializing.
        if c.bool(&["started"])
            && o.items(&["spec", "initContainers"])
                .nth(i)
                .is_some_and(|s| s.str(&["restartPolicy"]) == "Always")
        {
            continue;
        }
        initializing = true;
        reason = if terminated.has(&[]) {
            match terminated.str(&["reason"]) {
                "" if terminated.int(&["signal"]) != 0 => {
                    format!("Init:Signal:{}", terminated.int(&["signal"]))
                }
                "" => format!("Init:ExitCode:{}", terminated.int(&["exitCode"])),
                r => format!("Init:{r}"),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }

    if !initializing {
        restarts = 0;
        last_restart = None;
        let mut has_running = false;
        let statuses: Vec<Obj<'_>> = o.items(&["status", "containerStatuses"]).collect();
        // Walk backwards so the first container's reason wins, as kubectl users expect.
        for c in statuses.into_iter().rev() {
            restarts += c.int(&["restartCount"]);
            if let Some(t) = c.time(&["lastState", "terminated", "finishedAt"]) {
                last_restart = Some(last_restart.map_or(t, |l| l.max(t)));
            }
            let waiting = c.str(&["state", "waiting", "reason"]);
            let terminated = c.at(&["state", "terminated"]);
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if terminated.has(&[]) {
                reason = match terminated.str(&["reason"]) {
                    "" if terminated.int(&["signal"]) != 0 => {
                        format!("Signal:{}", terminated.int(&["signal"]))
                    }
                    "" => format!("ExitCode:{}", terminated.int(&["exitCode"])),
                    r => r.to_string(),
                };
            } else if c.bool(&["ready"]) && c.has(&["state", "running"]) {
                has_running = true;
                ready += 1;
            }
        }
        // One container finished while another still runs: the pod is not "Completed".
        if reason == "Completed" && has_running {
            reason = if o.condition("Ready") == "True" {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }

    if o.has(&["metadata", "deletionTimestamp"]) {
        reason = if o.str(&["status", "reason"]) == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .into();
    }

    let restarts = match last_restart {
        Some(t) => format!("{restarts} ({} ago)", human_duration(now.duration_since(t))),
        None => restarts.to_string(),
    };
    let ip = o
        .items(&["status", "podIPs"])
        .next()
        .map_or("", |p| p.str(&["ip"]));
    let ip = if ip.is_empty() {
        o.str(&["status", "podIP"])
    } else {
        ip
    };
    let gates = o.len(&["spec", "readinessGates"]);
    let readiness_gates = if gates == 0 {
        "<none>".to_string()
    } else {
        let true_gates = o
            .items(&["spec", "readinessGates"])
            .filter(|g| o.condition(g.str(&["conditionType"])) == "True")
            .count();
        format!("{true_gates}/{gates}")
    };
    vec![
        o.name(),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        o.age(now),
        json!(or_none(ip)),
        json!(or_none(o.str(&["spec", "nodeName"]))),
        json!(or_none(o.str(&["status", "nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

fn job_cells(o: Obj<'_>, now: Timestamp) -> Vec<Value> {
    let is = |t: &str| o.condition(t) == "True";
    let status = if is("Complete") {
        "Complete"
    } else if is("Failed") {
        "Failed"
    } else if o.has(&["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else if is("Suspended") {
        "Suspended"
    } else if is("FailureTarget") {
        "FailureTarget"
    } else if is("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let succeeded = o.int(&["status", "succeeded"]);
    let parallelism = o.int(&["spec", "parallelism"]);
    let completions = if o.has(&["spec", "completions"]) {
        format!("{succeeded}/{}", o.int(&["spec", "completions"]))
    } else if parallelism > 1 {
        format!("{succeeded}/1 of {parallelism}")
    } else {
        format!("{succeeded}/1")
    };
    let duration = match (
        o.time(&["status", "startTime"]),
        o.time(&["status", "completionTime"]),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start)),
        (Some(start), Some(end)) => human_duration(end.duration_since(start)),
    };
    let (names, images) = containers(o.at(&["spec", "template", "spec"]));
    vec![
        o.name(),
        json!(status),
        json!(completions),
        json!(duration),
        o.age(now),
        names,
        images,
        label_selector(o.at(&["spec", "selector"])),
    ]
}

fn service_cells(o: Obj<'_>, now: Timestamp) -> Vec<Value> {
    let ty = o.str(&["spec", "type"]);
    let external: Vec<&str> = o
        .items(&["spec", "externalIPs"])
        .filter_map(|v| v.0.as_str())
        .collect();
    let external = match ty {
        "ExternalName" => o.str(&["spec", "externalName"]).to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<&str> = o
                .items(&["status", "loadBalancer", "ingress"])
                .map(|i| {
                    if i.str(&["ip"]).is_empty() {
                        i.str(&["hostname"])
                    } else {
                        i.str(&["ip"])
                    }
                })
                .filter(|s| !s.is_empty())
                .collect();
            ips.extend(&external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    let ports: Vec<String> = o
        .items(&["spec", "ports"])
        .map(|p| {
            let protocol = match p.str(&["protocol"]) {
                "" => "TCP",
                proto => proto,
            };
            match p.int(&["nodePort"]) {
                0 => format!("{}/{protocol}", p.int(&["port"])),
                node => format!("{}:{node}/{protocol}", p.int(&["port"])),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        o.name(),
        json!(ty),
        json!(or_none(o.str(&["spec", "clusterIP"]))),
        json!(external),
        json!(ports),
        o.age(now),
        json!(key_values(o.at(&["spec", "selector"]))),
    ]
}

fn node_cells(o: Obj<'_>, now: Timestamp) -> Vec<Value> {
    let mut status = match o.condition("Ready") {
        "True" => "Ready".to_string(),
        "" => "Unknown".to_string(),
        _ => "NotReady".to_string(),
    };
    if o.bool(&["spec", "unschedulable"]) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<&str> = Vec::new();
    if let Some(labels) = o.at(&["metadata", "labels"]).0.as_object() {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role);
                }
            } else if key == "kubernetes.io/role" {
                if let Some(role) = value.as_str().filter(|r| !r.is_empty()) {
                    roles.push(role);
                }
            }
        }
    }
    roles.sort_unstable();
    roles.dedup();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |ty: &str| {
        o.items(&["status", "addresses"])
            .find(|a| a.str(&["type"]) == ty)
            .map_or("<none>", |a| a.str(&["address"]))
            .to_string()
    };
    let info = o.at(&["status", "nodeInfo"]);
    vec![
        o.name(),
        json!(status),
        json!(roles),
        o.age(now),
        json!(info.str(&["kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(info.str(&["osImage"]))),
        json!(or_none(info.str(&["kernelVersion"]))),
        json!(or_none(info.str(&["containerRuntimeVersion"]))),
    ]
}

/// core/v1 and events.k8s.io/v1 Events print alike; only the field names differ.
fn event_cells(o: Obj<'_>, now: Timestamp, events_v1: bool) -> Vec<Value> {
    let (regarding, note, first, last, count, source) = if events_v1 {
        let source = o.str(&["reportingController"]).to_string();
        let source = match o.str(&["reportingInstance"]) {
            "" => source,
            host => format!("{source}, {host}"),
        };
        let count = o.int_or(&["series", "count"], o.int(&["deprecatedCount"]));
        let last = o
            .time(&["series", "lastObservedTime"])
            .or(o.time(&["deprecatedLastTimestamp"]))
            .or(o.time(&["eventTime"]));
        let first = o
            .time(&["deprecatedFirstTimestamp"])
            .or(o.time(&["eventTime"]));
        (
            o.at(&["regarding"]),
            o.str(&["note"]),
            first,
            last,
            count,
            source,
        )
    } else {
        let source = match (o.str(&["source", "component"]), o.str(&["source", "host"])) {
            ("", _) => o.str(&["reportingComponent"]).to_string(),
            (c, "") => c.to_string(),
            (c, host) => format!("{c}, {host}"),
        };
        let count = o.int_or(&["series", "count"], o.int(&["count"]));
        let last = o
            .time(&["series", "lastObservedTime"])
            .or(o.time(&["lastTimestamp"]))
            .or(o.time(&["eventTime"]));
        let first = o.time(&["firstTimestamp"]).or(o.time(&["eventTime"]));
        (
            o.at(&["involvedObject"]),
            o.str(&["message"]),
            first,
            last,
            count,
            source,
        )
    };
    let object = format!(
        "{}/{}",
        regarding.str(&["kind"]).to_lowercase(),
        regarding.str(&["name"])
    );
    vec![
        json!(since(last, now)),
        json!(o.str(&["type"])),
        json!(o.str(&["reason"])),
        json!(object),
        json!(regarding.str(&["fieldPath"])),
        json!(source),
        json!(note.trim()),
        json!(since(first, now)),
        json!(count.to_string()),
        o.name(),
    ]
}

/// Up to three `ip:port` pairs, then "+ N more...", as kubectl shows endpoints.
fn endpoints(o: Obj<'_>) -> String {
    let mut all = Vec::new();
    for subset in o.items(&["subsets"]) {
        let addresses: Vec<&str> = subset
            .items(&["addresses"])
            .map(|a| a.str(&["ip"]))
            .collect();
        if subset.len(&["ports"]) == 0 {
            all.extend(addresses.iter().map(|a| a.to_string()));
        } else {
            for port in subset.items(&["ports"]) {
                for a in &addresses {
                    all.push(join_host_port(a, port.int(&["port"])));
                }
            }
        }
    }
    if all.is_empty() {
        return "<none>".into();
    }
    list_with_more(all, "<none>")
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn list_with_more(all: Vec<String>, empty: &str) -> String {
    const MAX: usize = 3;
    match all.len() {
        0 => empty.into(),
        n if n > MAX => format!("{} + {} more...", all[..MAX].join(","), n - MAX),
        _ => all.join(","),
    }
}

fn slice_ports(o: Obj<'_>) -> String {
    let ports: Vec<String> = o
        .items(&["ports"])
        .map(|p| match (p.at(&["port"]).0.as_i64(), p.str(&["name"])) {
            (Some(n), _) => n.to_string(),
            (None, name) if !name.is_empty() => name.to_string(),
            _ => "*".into(),
        })
        .collect();
    list_with_more(ports, "<unset>")
}

fn slice_endpoints(o: Obj<'_>) -> String {
    let addresses: Vec<String> = o
        .items(&["endpoints"])
        .flat_map(|e| {
            e.items(&["addresses"])
                .filter_map(|a| a.0.as_str())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    list_with_more(addresses, "<unset>")
}

fn pvc_cells(o: Obj<'_>, now: Timestamp) -> Vec<Value> {
    let phase = if o.has(&["metadata", "deletionTimestamp"]) {
        "Terminating"
    } else {
        o.str(&["status", "phase"])
    };
    let bound = !o.str(&["spec", "volumeName"]).is_empty();
    // Capacity and access modes are those of the bound volume, so only shown once bound.
    let (capacity, modes) = if bound {
        let short: Vec<&str> = o
            .items(&["status", "accessModes"])
            .filter_map(|m| match m.0.as_str() {
                Some("ReadWriteOnce") => Some("RWO"),
                Some("ReadOnlyMany") => Some("ROX"),
                Some("ReadWriteMany") => Some("RWX"),
                Some("ReadWriteOncePod") => Some("RWOP"),
                _ => None,
            })
            .collect();
        (
            o.str(&["status", "capacity", "storage"]).to_string(),
            short.join(","),
        )
    } else {
        (String::new(), String::new())
    };
    let class = match o.str(&[
        "metadata",
        "annotations",
        "volume.beta.kubernetes.io/storage-class",
    ]) {
        "" => o.str(&["spec", "storageClassName"]),
        c => c,
    };
    let vac = match o.str(&["spec", "volumeAttributesClassName"]) {
        "" => "<unset>",
        c => c,
    };
    let volume_mode = match o.str(&["spec", "volumeMode"]) {
        "" => "<unset>",
        m => m,
    };
    vec![
        o.name(),
        json!(phase),
        json!(o.str(&["spec", "volumeName"])),
        json!(capacity),
        json!(modes),
        json!(class),
        json!(vac),
        o.age(now),
        json!(volume_mode),
    ]
}

/// Names and images of a pod template's containers, comma-separated.
fn containers(pod_spec: Obj<'_>) -> (Value, Value) {
    let names: Vec<&str> = pod_spec
        .items(&["containers"])
        .map(|c| c.str(&["name"]))
        .collect();
    let images: Vec<&str> = pod_spec
        .items(&["containers"])
        .map(|c| c.str(&["image"]))
        .collect();
    (json!(names.join(",")), json!(images.join(",")))
}

/// `k=v,k2=v2` sorted by key, or `<none>`.
fn key_values(map: Obj<'_>) -> String {
    let mut pairs: Vec<String> = map
        .0
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// A LabelSelector in the string form selectors are written in (`app=web,tier in (a,b)`),
/// requirements sorted by key; an empty or absent selector prints `<none>`.
fn label_selector(selector: Obj<'_>) -> Value {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector.at(&["matchLabels"]).0.as_object() {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in selector.items(&["matchExpressions"]) {
        let key = e.str(&["key"]);
        let mut values: Vec<&str> = e.items(&["values"]).filter_map(|v| v.0.as_str()).collect();
        values.sort_unstable();
        let req = match e.str(&["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({})", values.join(",")),
        };
        reqs.push((key.to_string(), req));
    }
    reqs.sort();
    if reqs.is_empty() {
        json!("<none>")
    } else {
        json!(reqs
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{by_kind, KINDS};

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    fn kind(api_version: &str, k: &str) -> &'static Kind {
        by_kind(api_version, k).unwrap()
    }

    fn names(kind: &Kind) -> Vec<String> {
        columns(kind)
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The columns kubectl prints without `-o wide`.
    fn narrow(kind: &Kind) -> Vec<String> {
        columns(kind)
            .iter()
            .filter(|c| c["priority"] == 0)
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect()
    }

    #[test]
    fn human_durations_match_kubernetes() {
        let cases: &[(i64, &str)] = &[
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600 + 59 * 60, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (7 * 86400, "7d"),
            (8 * 86400 + 5 * 3600, "8d"),
            (400 * 86400, "400d"),
            (2 * 365 * 86400 + 86400, "2y1d"),
            (3 * 365 * 86400, "3y"),
            (9 * 365 * 86400 + 40 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(*secs)),
                *want,
                "{secs}s"
            );
        }
    }

    #[test]
    fn columns_are_the_ones_kubectl_prints() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("v1", "Pod", &["NAME", "READY", "STATUS", "RESTARTS", "AGE"]),
            (
                "apps/v1",
                "Deployment",
                &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            ),
            (
                "apps/v1",
                "ReplicaSet",
                &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            ),
            (
                "apps/v1",
                "DaemonSet",
                &[
                    "NAME",
                    "DESIRED",
                    "CURRENT",
                    "READY",
                    "UP-TO-DATE",
                    "AVAILABLE",
                    "NODE SELECTOR",
                    "AGE",
                ],
            ),
            ("apps/v1", "StatefulSet", &["NAME", "READY", "AGE"]),
            (
                "apps/v1",
                "ControllerRevision",
                &["NAME", "CONTROLLER", "REVISION", "AGE"],
            ),
            (
                "batch/v1",
                "Job",
                &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            ),
            (
                "batch/v1",
                "CronJob",
                &[
                    "NAME",
                    "SCHEDULE",
                    "TIMEZONE",
                    "SUSPEND",
                    "ACTIVE",
                    "LAST SCHEDULE",
                    "AGE",
                ],
            ),
            (
                "v1",
                "Service",
                &[
                    "NAME",
                    "TYPE",
                    "CLUSTER-IP",
                    "EXTERNAL-IP",
                    "PORT(S)",
                    "AGE",
                ],
            ),
            ("v1", "Node", &["NAME", "STATUS", "ROLES", "AGE", "VERSION"]),
            ("v1", "Namespace", &["NAME", "STATUS", "AGE"]),
            ("v1", "ConfigMap", &["NAME", "DATA", "AGE"]),
            ("v1", "Secret", &["NAME", "TYPE", "DATA", "AGE"]),
            ("v1", "ServiceAccount", &["NAME", "SECRETS", "AGE"]),
            (
                "v1",
                "Event",
                &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            ),
            ("v1", "Endpoints", &["NAME", "ENDPOINTS", "AGE"]),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                &["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
            ),
            (
                "coordination.k8s.io/v1",
                "Lease",
                &["NAME", "HOLDER", "AGE"],
            ),
            (
                "v1",
                "PersistentVolumeClaim",
                &[
                    "NAME",
                    "STATUS",
                    "VOLUME",
                    "CAPACITY",
                    "ACCESS MODES",
                    "STORAGECLASS",
                    "VOLUMEATTRIBUTESCLASS",
                    "AGE",
                ],
            ),
        ];
        for (av, k, want) in cases {
            assert_eq!(narrow(kind(av, k)), *want, "{av} {k}");
        }
        assert_eq!(
            names(kind("v1", "Pod"))[5..],
            ["IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(columns(kind("v1", "Pod"))[0]["format"], "name");
    }

    #[test]
    fn every_kind_has_one_cell_per_column_even_for_a_bare_object() {
        for k in KINDS {
            let bare = json!({"metadata": {"name": "x"}});
            assert_eq!(row(k, &bare, now()).len(), columns(k).len(), "{k:?}");
        }
    }

    #[test]
    fn controller_revision_rows_name_their_controller() {
        let cr = kind("apps/v1", "ControllerRevision");
        let owned = json!({
            "metadata": {"name": "web-6c7f9d", "creationTimestamp": "2025-06-01T11:00:00Z",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "u0"},
                    {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "uid": "u1", "controller": true}]},
            "revision": 3
        });
        assert_eq!(
            row(cr, &owned, now()),
            [
                json!("web-6c7f9d"),
                json!("daemonset.apps/web"),
                json!(3),
                json!("60m")
            ]
        );
        let orphan = json!({"metadata": {"name": "x"}, "revision": 1});
        assert_eq!(row(cr, &orphan, now())[1], json!("<none>"));
    }

    fn running_pod_one_of_two_ready() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d4b9c-x2x", "namespace": "default", "creationTimestamp": "2025-06-01T11:57:00Z",
                "labels": {"app": "web"}},
            "spec": {"nodeName": "box-1", "containers": [{"name": "app", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2025-06-01T11:57:05Z"}}},
                    {"name": "sidecar", "ready": false, "restartCount": 0, "state": {"running": {"startedAt": "2025-06-01T11:57:05Z"}}}
                ]}
        })
    }

    #[test]
    fn pod_rows() {
        let pod = kind("v1", "Pod");
        let crash = json!({
            "metadata": {"name": "crashy", "creationTimestamp": "2025-06-01T10:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "c", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2025-06-01T11:55:00Z"}}}]}
        });
        let completed = json!({
            "metadata": {"name": "done", "creationTimestamp": "2025-05-30T09:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let mut terminating = running_pod_one_of_two_ready();
        terminating["metadata"]["deletionTimestamp"] = json!("2025-06-01T11:59:50Z");
        let init = json!({
            "metadata": {"name": "init", "creationTimestamp": "2025-06-01T11:59:58Z"},
            "spec": {"initContainers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "restartCount": 0, "state": {"running": {}}}]}
        });
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}});
        let cases: &[(&Value, Value)] = &[
            (
                &running_pod_one_of_two_ready(),
                json!([
                    "web-7d4b9c-x2x",
                    "1/2",
                    "Running",
                    "0",
                    "3m",
                    "10.42.0.7",
                    "box-1",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                &crash,
                json!([
                    "crashy",
                    "0/1",
                    "CrashLoopBackOff",
                    "5 (5m ago)",
                    "120m",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                &completed,
                json!([
                    "done",
                    "0/1",
                    "Completed",
                    "0",
                    "2d3h",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                &terminating,
                json!([
                    "web-7d4b9c-x2x",
                    "1/2",
                    "Terminating",
                    "0",
                    "3m",
                    "10.42.0.7",
                    "box-1",
                    "<none>",
                    "<none>"
                ]),
            ),
            (
                &init,
                json!([
                    "init", "0/1", "Init:1/2", "0", "2s", "<none>", "<none>", "<none>", "<none>"
                ]),
            ),
            (
                &pending,
                json!([
                    "p",
                    "0/1",
                    "Pending",
                    "0",
                    "<unknown>",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>"
                ]),
            ),
        ];
        for (object, want) in cases {
            assert_eq!(Value::Array(row(pod, object, now())), *want);
        }
    }

    #[test]
    fn workload_rows() {
        let deployment = json!({
            "metadata": {"name": "web", "creationTimestamp": "2025-06-01T07:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
                    "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "edge"]}]},
                "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "log", "image": "fluent-bit"}]}}},
            "status": {"replicas": 4, "updatedReplicas": 2, "readyReplicas": 3, "availableReplicas": 3}
        });
        let job = json!({
            "metadata": {"name": "backup", "creationTimestamp": "2025-06-01T11:00:00Z"},
            "spec": {"completions": 3, "template": {"spec": {"containers": [{"name": "b", "image": "restic"}]}},
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}},
            "status": {"succeeded": 3, "startTime": "2025-06-01T11:00:01Z", "completionTime": "2025-06-01T11:02:31Z",
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}
        });
        let running_job = json!({
            "metadata": {"name": "j"}, "spec": {"parallelism": 2},
            "status": {"startTime": "2025-06-01T11:59:30Z", "active": 2}
        });
        let cron = json!({
            "metadata": {"name": "nightly", "creationTimestamp": "2025-05-01T00:00:00Z"},
            "spec": {"schedule": "0 3 * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "restic"}]}}}}},
            "status": {"active": [{"name": "nightly-1"}], "lastScheduleTime": "2025-06-01T03:00:00Z"}
        });
        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "pg", "image": "postgres"}]}}},
            "status": {"readyReplicas": 1}});
        let ds = json!({"metadata": {"name": "agent"}, "spec": {"template": {"spec": {"nodeSelector": {"zone": "edge", "arch": "arm64"},
            "containers": [{"name": "a", "image": "agent"}]}}}, "status": {"desiredNumberScheduled": 4, "currentNumberScheduled": 4,
            "numberReady": 3, "updatedNumberScheduled": 4, "numberAvailable": 3}});
        let cases: &[(&str, &str, &Value, Value)] = &[
            (
                "apps/v1",
                "Deployment",
                &deployment,
                json!([
                    "web",
                    "3/3",
                    2,
                    3,
                    "5h",
                    "app,log",
                    "nginx:1.27,fluent-bit",
                    "app=web,tier in (edge,fe)"
                ]),
            ),
            (
                "apps/v1",
                "ReplicaSet",
                &deployment,
                json!([
                    "web",
                    3,
                    4,
                    3,
                    "5h",
                    "app,log",
                    "nginx:1.27,fluent-bit",
                    "app=web,tier in (edge,fe)"
                ]),
            ),
            (
                "apps/v1",
                "StatefulSet",
                &sts,
                json!(["db", "1/3", "<unknown>", "pg", "postgres"]),
            ),
            (
                "apps/v1",
                "DaemonSet",
                &ds,
                json!([
                    "agent",
                    4,
                    4,
                    3,
                    4,
                    3,
                    "arch=arm64,zone=edge",
                    "<unknown>",
                    "a",
                    "agent",
                    "<none>"
                ]),
            ),
            (
                "batch/v1",
                "Job",
                &job,
                json!([
                    "backup",
                    "Complete",
                    "3/3",
                    "2m30s",
                    "60m",
                    "b",
                    "restic",
                    "batch.kubernetes.io/controller-uid=u1"
                ]),
            ),
            (
                "batch/v1",
                "Job",
                &running_job,
                json!([
                    "j",
                    "Running",
                    "0/1 of 2",
                    "30s",
                    "<unknown>",
                    "",
                    "",
                    "<none>"
                ]),
            ),
            (
                "batch/v1",
                "CronJob",
                &cron,
                json!([
                    "nightly",
                    "0 3 * * *",
                    "<none>",
                    false,
                    1,
                    "9h",
                    "31d",
                    "b",
                    "restic",
                    "<none>"
                ]),
            ),
        ];
        for (av, k, object, want) in cases {
            assert_eq!(Value::Array(row(kind(av, k), object, now())), *want, "{k}");
        }
    }

    #[test]
    fn core_rows() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2025-06-01T11:59:15Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.12", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        });
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.13", "ports": [{"port": 443}]}});
        let headless =
            json!({"metadata": {"name": "db"}, "spec": {"type": "ClusterIP", "clusterIP": "None"}});
        let node = json!({
            "metadata": {"name": "box-1", "creationTimestamp": "2025-05-31T12:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/edge": "true", "kubernetes.io/hostname": "box-1"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "box-1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0+kith.0.1.0", "osImage": "Debian 12", "kernelVersion": "6.1.0", "containerRuntimeVersion": "kith://0.1.0"}}
        });
        let pvc = json!({
            "metadata": {"name": "data"},
            "spec": {"volumeName": "pv-1", "storageClassName": "local", "accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": "5Gi"}}
        });
        let event = json!({
            "metadata": {"name": "web.17a", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "reason": "Pulled", "message": "Successfully pulled image\n", "type": "Normal", "count": 3,
            "source": {"component": "kubelet", "host": "box-1"},
            "firstTimestamp": "2025-06-01T11:50:00Z", "lastTimestamp": "2025-06-01T11:59:00Z"
        });
        let event_v1 = json!({
            "metadata": {"name": "web.17b"}, "regarding": {"kind": "Deployment", "name": "web"}, "note": "Scaled up",
            "reason": "ScalingReplicaSet", "type": "Normal", "reportingController": "deployment-controller",
            "eventTime": "2025-06-01T11:59:58.000000Z"
        });
        let eps = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [{"ip": "10.42.0.7"}, {"ip": "10.42.0.8"}, {"ip": "fd00::9"}],
            "ports": [{"port": 80}, {"port": 443}]}]});
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"name": "http", "port": 80}, {"name": "x"}],
            "endpoints": [{"addresses": ["10.42.0.7"]}, {"addresses": ["10.42.0.8"]}]});
        let cases: &[(&str, &str, Value, Value)] = &[
            (
                "v1",
                "Service",
                svc,
                json!([
                    "web",
                    "NodePort",
                    "10.43.0.12",
                    "<none>",
                    "80:30080/TCP,53/UDP",
                    "45s",
                    "app=web"
                ]),
            ),
            (
                "v1",
                "Service",
                lb,
                json!([
                    "lb",
                    "LoadBalancer",
                    "10.43.0.13",
                    "<pending>",
                    "443/TCP",
                    "<unknown>",
                    "<none>"
                ]),
            ),
            (
                "v1",
                "Service",
                headless,
                json!([
                    "db",
                    "ClusterIP",
                    "None",
                    "<none>",
                    "<none>",
                    "<unknown>",
                    "<none>"
                ]),
            ),
            (
                "v1",
                "Node",
                node,
                json!([
                    "box-1",
                    "Ready,SchedulingDisabled",
                    "control-plane,edge",
                    "24h",
                    "v1.33.0+kith.0.1.0",
                    "192.168.1.10",
                    "<none>",
                    "Debian 12",
                    "6.1.0",
                    "kith://0.1.0"
                ]),
            ),
            (
                "v1",
                "Namespace",
                json!({"metadata": {"name": "kube-system"}, "status": {"phase": "Active"}}),
                json!(["kube-system", "Active", "<unknown>"]),
            ),
            (
                "v1",
                "ConfigMap",
                json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
                json!(["cfg", 3, "<unknown>"]),
            ),
            (
                "v1",
                "Secret",
                json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
                json!(["tls", "kubernetes.io/tls", 2, "<unknown>"]),
            ),
            (
                "v1",
                "ServiceAccount",
                json!({"metadata": {"name": "default"}}),
                json!(["default", 0, "<unknown>"]),
            ),
            (
                "v1",
                "PersistentVolumeClaim",
                pvc,
                json!([
                    "data",
                    "Bound",
                    "pv-1",
                    "5Gi",
                    "RWO,ROX",
                    "local",
                    "<unset>",
                    "<unknown>",
                    "<unset>"
                ]),
            ),
            (
                "v1",
                "Event",
                event,
                json!([
                    "60s",
                    "Normal",
                    "Pulled",
                    "pod/web",
                    "spec.containers{app}",
                    "kubelet, box-1",
                    "Successfully pulled image",
                    "10m",
                    "3",
                    "web.17a"
                ]),
            ),
            (
                "events.k8s.io/v1",
                "Event",
                event_v1,
                json!([
                    "2s",
                    "Normal",
                    "ScalingReplicaSet",
                    "deployment/web",
                    "",
                    "deployment-controller",
                    "Scaled up",
                    "2s",
                    "0",
                    "web.17b"
                ]),
            ),
            (
                "v1",
                "Endpoints",
                eps,
                json!([
                    "web",
                    "10.42.0.7:80,10.42.0.8:80,[fd00::9]:80 + 3 more...",
                    "<unknown>"
                ]),
            ),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                slice,
                json!([
                    "web-abc",
                    "IPv4",
                    "80,x",
                    "10.42.0.7,10.42.0.8",
                    "<unknown>"
                ]),
            ),
            (
                "coordination.k8s.io/v1",
                "Lease",
                json!({"metadata": {"name": "box-1"}, "spec": {"holderIdentity": "box-1"}}),
                json!(["box-1", "box-1", "<unknown>"]),
            ),
        ];
        for (av, k, object, want) in cases {
            assert_eq!(Value::Array(row(kind(av, k), object, now())), *want, "{k}");
        }
    }

    #[test]
    fn table_carries_columns_rows_and_the_requested_object() {
        let pod = kind("v1", "Pod");
        let objects = [running_pod_one_of_two_ready()];
        let meta = json!({"resourceVersion": "42"});
        let t = table(pod, &objects, IncludeObject::default(), meta.clone(), now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], meta);
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        let r = &t["rows"][0];
        assert_eq!(r["cells"][2], "Running");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(r["object"]["metadata"]["labels"]["app"], "web");
        assert!(r["object"].get("spec").is_none());

        let full = table(pod, &objects, IncludeObject::Object, json!({}), now());
        assert_eq!(full["rows"][0]["object"], objects[0]);
        let none = table(pod, &objects, IncludeObject::None, json!({}), now());
        assert!(none["rows"][0].get("object").is_none());

        let mut done = running_pod_one_of_two_ready();
        done["status"]["phase"] = json!("Succeeded");
        let t = table(pod, &[done], IncludeObject::None, json!({}), now());
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
    }

    /// Writes Tables of sample objects to `$KITH_DUMP_TABLES`, keyed by collection path,
    /// for e2e/scripts/discovery-check.py to serve to real kubectl (`kubectl get`).
    #[test]
    #[ignore = "writes a file; run by e2e/scripts/discovery-check.py"]
    fn dump_tables() {
        let Ok(path) = std::env::var("KITH_DUMP_TABLES") else {
            return;
        };
        let crash = json!({
            "metadata": {"name": "crashy", "namespace": "default", "creationTimestamp": "2025-06-01T10:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-06-01T11:55:00Z"}}}]}
        });
        let svc = json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2025-06-01T11:59:15Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.12", "selector": {"app": "web"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
        });
        let deploy = json!({
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2025-06-01T07:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}},
            "status": {"replicas": 4, "updatedReplicas": 2, "readyReplicas": 3, "availableReplicas": 3}
        });
        let meta = json!({"resourceVersion": "7"});
        let doc = json!({
            "/api/v1/namespaces/default/pods":
                table(kind("v1", "Pod"), &[running_pod_one_of_two_ready(), crash], IncludeObject::Metadata, meta.clone(), now()),
            "/api/v1/namespaces/default/services":
                table(kind("v1", "Service"), &[svc], IncludeObject::Metadata, meta.clone(), now()),
            "/apis/apps/v1/namespaces/default/deployments":
                table(kind("apps/v1", "Deployment"), &[deploy], IncludeObject::Metadata, meta, now()),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }

    #[test]
    fn include_object_parses_the_three_values_only() {
        assert_eq!("None".parse(), Ok(IncludeObject::None));
        assert_eq!("Metadata".parse(), Ok(IncludeObject::Metadata));
        assert_eq!("Object".parse(), Ok(IncludeObject::Object));
        assert_eq!(
            "object".parse::<IncludeObject>(),
            Err(BadIncludeObject("object".into()))
        );
    }
}
