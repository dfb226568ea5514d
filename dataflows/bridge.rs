//! Async work for operators: futures run on the job's tokio runtime, never on a timely worker thread, and each
//! result wakes the operator that spawned it.
//!
//! Invariant: every spawned future yields exactly one result, even when it panics (its `on_panic` makes one), so an
//! operator never waits for a result that cannot come, and never loses one that did.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use futures::FutureExt;
use timely::dataflow::operators::Capability;
use timely::scheduling::SyncActivator;
use tokio::runtime::Handle;

type OnPanic<T> = Box<dyn FnOnce(String) -> T>;

/// The futures an operator has in flight, and their results.
pub struct Tasks<T> {
    runtime: Handle,
    activator: SyncActivator,
    tx: mpsc::Sender<(u64, Result<T, String>)>,
    rx: mpsc::Receiver<(u64, Result<T, String>)>,
    /// What each future in flight yields if it panics.
    in_flight: BTreeMap<u64, OnPanic<T>>,
    next: u64,
}

impl<T: Send + 'static> Tasks<T> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        let (tx, rx) = mpsc::channel();
        Tasks { runtime, activator, tx, rx, in_flight: BTreeMap::new(), next: 0 }
    }

    /// Runs `future` on the runtime; its result comes back through [`Tasks::ready`] under the returned id, and a
    /// panic as `on_panic(message)`.
    pub fn spawn(
        &mut self,
        future: impl Future<Output = T> + Send + 'static,
        on_panic: impl FnOnce(String) -> T + 'static,
    ) -> u64 {
        let id = self.next;
        self.next += 1;
        self.in_flight.insert(id, Box::new(on_panic));
        let tx = self.tx.clone();
        let activator = self.activator.clone();
        self.runtime.spawn(async move {
            let result = AssertUnwindSafe(future).catch_unwind().await.map_err(panic_message);
            // The operator may be gone when the job shuts down; nothing is waiting for the result then.
            let _ = tx.send((id, result));
            let _ = activator.activate();
        });
        id
    }

    /// Results that have arrived since the last call, with their ids.
    pub fn ready(&mut self) -> Vec<(u64, T)> {
        let arrived: Vec<_> = self.rx.try_iter().collect();
        let mut ready = Vec::with_capacity(arrived.len());
        for (id, result) in arrived {
            if let Some(on_panic) = self.in_flight.remove(&id) {
                ready.push((id, result.unwrap_or_else(on_panic)));
            }
        }
        ready
    }

    /// Futures spawned whose results have not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Tasks whose results are emitted at a time held for each of them: the operator's output frontier cannot pass that
/// time until the task's result is out.
pub struct CapabilityTasks<T> {
    tasks: Tasks<T>,
    held: BTreeMap<u64, Capability<u64>>,
}

impl<T: Send + 'static> CapabilityTasks<T> {
    pub fn new(runtime: Handle, activator: SyncActivator) -> Self {
        CapabilityTasks { tasks: Tasks::new(runtime, activator), held: BTreeMap::new() }
    }

    /// Runs `future`, holding `cap` until its result is taken; a panic becomes `on_panic(message)`.
    pub fn spawn(
        &mut self,
        cap: Capability<u64>,
        future: impl Future<Output = T> + Send + 'static,
        on_panic: impl FnOnce(String) -> T + 'static,
    ) {
        let id = self.tasks.spawn(future, on_panic);
        self.held.insert(id, cap);
    }

    /// Finished results with the capabilities to emit them at.
    pub fn ready(&mut self) -> Vec<(Capability<u64>, T)> {
        self.tasks.ready().into_iter().filter_map(|(id, value)| Some((self.held.remove(&id)?, value))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_still_yields_a_result_and_loses_no_other() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
        let handle = runtime.handle().clone();
        timely::execute_directly(move |worker| {
            let mut tasks: Tasks<Result<u32, String>> = Tasks::new(handle.clone(), worker.sync_activator_for(vec![0]));
            tasks.spawn(async { Ok(1) }, Err);
            tasks.spawn(async { panic!("boom") }, Err);
            tasks.spawn(async { Ok(3) }, Err);
            let mut results = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while tasks.in_flight() > 0 && std::time::Instant::now() < deadline {
                results.extend(tasks.ready());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            results.sort();
            assert_eq!(results, vec![(0, Ok(1)), (1, Err("boom".to_string())), (2, Ok(3))]);
        });
    }
}
