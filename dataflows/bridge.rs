//! Async work for operators: futures run on the job's tokio runtime, never on a timely worker thread, and each
//! result wakes the operator that spawned it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use futures::FutureExt;
use timely::scheduling::SyncActivator;
use tokio::runtime::Handle;

/// The futures an operator has in flight, and their results.
pub struct Tasks<T> {
    runtime: Handle,
    activator: SyncActivator,
    tx: mpsc::Sender<Result<T, String>>,
    rx: mpsc::Receiver<Result<T, String>>,
    in_flight: usize,
}

impl<T: Send + 'static> Tasks<T> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        let (tx, rx) = mpsc::channel();
        Tasks { runtime, activator, tx, rx, in_flight: 0 }
    }

    /// Runs `future` on the runtime; its result (or its panic, as an error) comes back through [`Tasks::ready`].
    pub fn spawn(&mut self, future: impl Future<Output = T> + Send + 'static) {
        self.in_flight += 1;
        let tx = self.tx.clone();
        let activator = self.activator.clone();
        self.runtime.spawn(async move {
            let result = AssertUnwindSafe(future).catch_unwind().await.map_err(panic_message);
            // The operator may be gone when the job shuts down; nothing is waiting for the result then.
            let _ = tx.send(result);
            let _ = activator.activate();
        });
    }

    /// Results that have arrived since the last call.
    pub fn ready(&mut self) -> Vec<Result<T, String>> {
        let ready: Vec<_> = self.rx.try_iter().collect();
        self.in_flight -= ready.len();
        ready
    }

    /// Futures spawned whose results have not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Tasks whose results are emitted at a time held for each of them: the operator's output frontier cannot pass that
/// time until the task's result is out. A task that panics still yields a result (made by its `on_panic`), so no
/// capability is released without one and no other task's result is lost.
pub struct CapabilityTasks<T> {
    tasks: Tasks<(u64, Result<T, String>)>,
    held: std::collections::BTreeMap<u64, Held<T>>,
    next: u64,
}

type Held<T> = (timely::dataflow::operators::Capability<u64>, Box<dyn FnOnce(String) -> T>);

impl<T: Send + 'static> CapabilityTasks<T> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        CapabilityTasks { tasks: Tasks::new(runtime, activator), held: Default::default(), next: 0 }
    }

    /// Runs `future`, holding `cap` until its result is taken; a panic becomes `on_panic(message)`.
    pub fn spawn(
        &mut self,
        cap: timely::dataflow::operators::Capability<u64>,
        future: impl Future<Output = T> + Send + 'static,
        on_panic: impl FnOnce(String) -> T + 'static,
    ) {
        let id = self.next;
        self.next += 1;
        self.held.insert(id, (cap, Box::new(on_panic)));
        self.tasks.spawn(async move { (id, AssertUnwindSafe(future).catch_unwind().await.map_err(panic_message)) });
    }

    /// Finished results with the capabilities to emit them at.
    pub fn ready(&mut self) -> Vec<(timely::dataflow::operators::Capability<u64>, T)> {
        let mut done = Vec::new();
        for result in self.tasks.ready() {
            // The outer wrapper cannot panic (the future's panic is caught inside it).
            let Ok((id, value)) = result else { continue };
            if let Some((cap, on_panic)) = self.held.remove(&id) {
                done.push((cap, value.unwrap_or_else(on_panic)));
            }
        }
        done
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.in_flight()
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "task panicked".to_string())
}
