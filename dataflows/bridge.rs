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
            let result = AssertUnwindSafe(future).catch_unwind().await.map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "task panicked".to_string())
            });
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
/// time until the task's result is out.
pub struct CapabilityTasks<T> {
    tasks: Tasks<(u64, T)>,
    held: std::collections::BTreeMap<u64, timely::dataflow::operators::Capability<u64>>,
    next: u64,
}

impl<T: Send + 'static> CapabilityTasks<T> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        CapabilityTasks { tasks: Tasks::new(runtime, activator), held: Default::default(), next: 0 }
    }

    /// Runs `future`, holding `cap` until its result is taken.
    pub fn spawn(
        &mut self,
        cap: timely::dataflow::operators::Capability<u64>,
        future: impl Future<Output = T> + Send + 'static,
    ) {
        let id = self.next;
        self.next += 1;
        self.held.insert(id, cap);
        self.tasks.spawn(async move { (id, future.await) });
    }

    /// Finished results with the capabilities to emit them at. A panicked task cannot be matched to its capability:
    /// every capability is released and the panic returned, for the job to stop on.
    pub fn ready(&mut self) -> Result<Vec<(timely::dataflow::operators::Capability<u64>, T)>, String> {
        let mut done = Vec::new();
        for result in self.tasks.ready() {
            let (id, value) = result.inspect_err(|_| self.held.clear())?;
            if let Some(cap) = self.held.remove(&id) {
                done.push((cap, value));
            }
        }
        Ok(done)
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.in_flight()
    }
}
