//! A controller's work queue: kube-runtime's `applier` fed by the watches the controller
//! names (its own kind, the kinds it owns, the kinds it watches through a mapper), like
//! kube-runtime's `Controller`, but with the queue visible in `/metrics` as client-go's
//! `workqueue_depth` and `workqueue_adds_total` (label `name`), which kube-controller-manager's
//! dashboards and alerts read. `Controller` keeps its trigger streams to itself, so the
//! queue is built here from the same public parts (`reflector`, `trigger_self`,
//! `trigger_owners`, `trigger_with`, `applier`).
//!
//! Depth counts objects that were triggered and whose reconcile has not started, as
//! client-go counts keys added and not yet taken. Re-tries a reconcile asks for (a requeue
//! `Action`, the error policy) wait inside kube-runtime's scheduler and are not counted,
//! as client-go's `AddAfter` items are not until their delay ends.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{
    applier, trigger_owners, trigger_self, trigger_with, Action, Config, Error as ControllerError,
    ReconcileReason, ReconcileRequest,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// What identifies a queued object: its namespace and name.
type Key = (Option<String>, String);

/// The keys waiting in a queue: a set, because triggers for an object already waiting
/// merge into one reconcile (kube-runtime's scheduler does the same).
#[derive(Debug, Default)]
struct Pending(HashSet<Key>);

impl Pending {
    /// A trigger for `key`; whether it was not already waiting (an add, in client-go's terms).
    fn add(&mut self, key: Key) -> bool {
        self.0.insert(key)
    }

    /// `key` left the queue: its reconcile started, or its object is gone.
    fn take(&mut self, key: &Key) {
        self.0.remove(key);
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

type Trigger<K> = BoxStream<'static, Result<ReconcileRequest<K>, watcher::Error>>;

/// The watches of one controller of kind `K`, then [`Queue::run`] reconciles what they
/// trigger.
pub(crate) struct Queue<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    name: &'static str,
    store: Store<K>,
    triggers: SelectAll<Trigger<K>>,
}

impl<K> Queue<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// The queue of controller `name`, which reconciles every object of `api`'s kind (each
    /// change of one triggers it).
    pub fn new(name: &'static str, api: Api<K>) -> Self {
        let writer = reflector::store::Writer::<K>::default();
        let store = writer.as_reader();
        let own = trigger_self(
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .applied_objects(),
            (),
        );
        let mut triggers = SelectAll::new();
        triggers.push(own.boxed());
        Queue {
            name,
            store,
            triggers,
        }
    }

    /// The controller's cache of its own kind (ready once the first list arrived).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A change of a `C` triggers its controlling owner of kind `K`.
    pub fn owns<C>(mut self, api: Api<C>) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        // Owner references are metadata: watch only that, as kube-runtime's `owns` does.
        let meta: Api<PartialObjectMeta<C>> = Api::all(api.into_client());
        let children = watcher(meta, watcher::Config::default()).default_backoff();
        self.triggers
            .push(trigger_owners(children.touched_objects(), (), ()).boxed());
        self
    }

    /// A change of an `O` triggers the objects `mapper` names.
    pub fn watches<O, I>(
        mut self,
        api: Api<O>,
        mapper: impl Fn(O) -> I + Send + Sync + 'static,
    ) -> Self
    where
        O: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
        I: IntoIterator<Item = ObjectRef<K>> + 'static,
        I::IntoIter: Send,
    {
        let others = watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects();
        let mapped = trigger_with(others, move |o: O| {
            let reason = ReconcileReason::RelatedObjectUpdated {
                obj_ref: Box::new(ObjectRef::from_obj(&o).erase()),
            };
            mapper(o).into_iter().map(move |obj_ref| ReconcileRequest {
                obj_ref,
                reason: reason.clone(),
            })
        });
        self.triggers.push(mapped.boxed());
        self
    }

    /// Reconcile what the watches trigger until the task is dropped, counting passes
    /// (`kith_controller_reconcile_total`, errors) and the queue (`workqueue_*`).
    pub async fn run<Ctx, E, F>(
        self,
        reconcile: impl Fn(Arc<K>, Arc<Ctx>) -> F + Send + 'static,
        error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + 'static,
        ctx: Arc<Ctx>,
    ) where
        Ctx: Send + Sync + 'static,
        E: std::error::Error + Send + 'static,
        F: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let name = self.name;
        let (depth_gauge, adds) = crate::metrics::control().workqueue(name);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let depth = move |p: &Pending| {
            depth_gauge.set(p.len() as i64);
        };
        let added = Arc::clone(&pending);
        let (queued_depth, started_depth, gone_depth) = (depth.clone(), depth.clone(), depth);
        let queue = self.triggers.inspect_ok(move |req| {
            let mut p = added.lock().unwrap_or_else(|e| e.into_inner());
            if p.add(key_of(&req.obj_ref)) {
                adds.inc();
            }
            queued_depth(&p);
        });
        let started = Arc::clone(&pending);
        let reconciler = move |obj: Arc<K>, ctx: Arc<Ctx>| {
            let key = (
                obj.meta().namespace.clone(),
                obj.meta().name.clone().unwrap_or_default(),
            );
            let mut p = started.lock().unwrap_or_else(|e| e.into_inner());
            p.take(&key);
            started_depth(&p);
            drop(p);
            Box::pin(reconcile(obj, ctx)) as Pin<Box<dyn Future<Output = Result<Action, E>> + Send>>
        };
        let mut count = super::count_reconciles(name);
        applier(
            reconciler,
            error_policy,
            ctx,
            self.store,
            queue,
            Config::default(),
        )
        .for_each(move |result| {
            // An object deleted while it waited is never reconciled: it leaves the queue here.
            if let Err(ControllerError::ObjectNotFound(gone)) = &result {
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                p.take(&(gone.namespace.clone(), gone.name.clone()));
                gone_depth(&p);
            }
            count(result)
        })
        .await;
    }
}

fn key_of<K: Resource>(r: &ObjectRef<K>) -> Key {
    (r.namespace.clone(), r.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> Key {
        (Some(ns.to_string()), name.to_string())
    }

    #[test]
    fn pending_counts_each_waiting_object_once() {
        enum Step {
            Add(&'static str, bool),
            Take(&'static str),
        }
        use Step::*;
        let cases: &[(&str, &[Step], usize)] = &[
            ("one trigger", &[Add("a", true)], 1),
            (
                "two triggers of one object merge",
                &[Add("a", true), Add("a", false)],
                1,
            ),
            ("two objects", &[Add("a", true), Add("b", true)], 2),
            ("started leaves the queue", &[Add("a", true), Take("a")], 0),
            (
                "triggered again while running is an add again",
                &[Add("a", true), Take("a"), Add("a", true)],
                1,
            ),
            ("taking what is not there", &[Take("a")], 0),
        ];
        for (name, steps, depth) in cases {
            let mut p = Pending::default();
            for step in steps.iter() {
                match step {
                    Add(k, fresh) => assert_eq!(p.add(key("ns", k)), *fresh, "{name}"),
                    Take(k) => p.take(&key("ns", k)),
                }
            }
            assert_eq!(p.len(), *depth, "{name}");
        }
        // The namespace is part of the key.
        let mut p = Pending::default();
        assert!(p.add(key("a", "x")));
        assert!(p.add(key("b", "x")));
        assert!(p.add((None, "x".into())));
        assert_eq!(p.len(), 3);
    }
}
