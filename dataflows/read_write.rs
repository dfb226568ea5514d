//! Read + write: every worker reads the splits routed to it from the cluster and writes them through a
//! `LakeWriter` (Fluss's stateless `TieringSourceReader`). No split state survives the operator: a restarted job
//! plans again from the lake's offsets.
//!
//! A split is one or more ranges written through one writer. Per range, a fetch task pulls `[start, stop)` from the
//! cluster in responses of up to `fetch_max_bytes`, a bounded channel away from the writer, so the next fetch
//! overlaps the encoding of the current batch; a packed split's next ranges are fetched while the current one is
//! written, their fetches gathered into multi-bucket requests by the split's [`Fetcher`]. Memory per split stays
//! bounded whatever its size: about `fetch_max_bytes` of responses in flight (a packed split's
//! [`RANGES_FETCHED_AHEAD`] ranges share it) and a few stored batches per range, plus the slices gathered for the
//! writer and the writer's buffers.
//!
//! Frontier contract: a split received at time `t` holds a capability at `t` until its write result is emitted, so
//! the output frontier passes `t` only when every split of round `t` routed here is written (or failed). At most
//! `max_splits_in_flight` splits are worked on at once; the rest wait in arrival order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint;
use crate::lake::{WriterContext, WrittenData, lake_schema, with_system_columns};
use crate::model::log::LogBatch;
use crate::model::tiering::{FetchAsk, FetchedLog, LogReader, TieringCluster, answers_checked};
use arrow::record_batch::RecordBatch;

use super::bridge::CapabilityTasks;
use super::consolidate::Consolidator;
use super::types::{Failure, Split, SplitRange, WriteResult};
use super::{JobContext, SplitWork};

/// Reads and writes the splits of `splits`; emits one write result per split.
pub fn read_write<'scope>(
    splits: Stream<'scope, u64, Vec<Split>>,
    ctx: Arc<JobContext>,
) -> Stream<'scope, u64, Vec<WriteResult>> {
    let scope = splits.scope();
    let worker = scope.index();
    splits.unary_frontier::<CapacityContainerBuilder<Vec<WriteResult>>, _, _, _>(
        // A split whose snapshot the planner holds in memory runs where it was planned (worker 0).
        Exchange::new(|s: &Split| if s.snapshot.is_some_and(|k| k.held_by_planner) { 0 } else { s.route }),
        "ReadWrite",
        move |_initial, info| {
            let mut tasks: CapabilityTasks<WriteResult> =
                CapabilityTasks::new(ctx.runtime.clone(), scope.worker().sync_activator_for(info.address.to_vec()));
            let mut queue: VecDeque<(Capability<u64>, Split)> = VecDeque::new();
            move |(input, _frontier), output| {
                input.for_each(|cap, data| {
                    for split in data.drain(..) {
                        if let Some(cap) = cap.retain_least(0) {
                            queue.push_back((cap, split));
                        }
                    }
                });
                for (cap, result) in tasks.ready() {
                    output.session(&cap).give(result);
                }
                // Start queued splits only after taking finished ones: a finished split frees a slot, and no
                // other wake-up may come to fill it.
                while tasks.in_flight() < ctx.config.max_splits_in_flight {
                    let Some((cap, split)) = queue.pop_front() else {
                        break;
                    };
                    let ctx = Arc::clone(&ctx);
                    let first = split.ranges.first().copied();
                    let span = tracing::info_span!("split", table = %split.table.path, epoch = split.tiering_epoch,
                        partition = ?split.partition_name, bucket = first.map(|r| r.bucket.bucket),
                        start = first.map(|r| r.start), ranges = split.ranges.len());
                    let failed = failed_split(&split);
                    tasks.spawn(cap, async move { tier_split(&ctx, split, worker).await }.instrument(span), failed);
                }
            }
        },
    )
}

/// The result of a split whose task panicked (a bug: the round fails, its other files are still accounted for).
fn failed_split(split: &Split) -> impl FnOnce(String) -> WriteResult + 'static {
    let (round_id, index, ranges) = (split.round_id.clone(), split.index, split.ranges.clone());
    move |panic| {
        tracing::error!(%panic, round = %round_id, index, "a split task panicked");
        let failure = Failure::new(ErrorKind::Internal, format!("the split task panicked: {panic}"));
        WriteResult { round_id, index, ranges, written: Err(failure) }
    }
}

/// Reads one split and writes it into the lake.
async fn tier_split(ctx: &JobContext, split: Split, worker: usize) -> WriteResult {
    let started = std::time::Instant::now();
    ctx.metrics.splits_in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outcome = write_split(ctx, &split, worker).await;
    ctx.metrics.splits_in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok((w, _)) = &outcome {
        ctx.metrics.add_split(w.rows, w.files, w.file_bytes);
        tracing::debug!(rows = w.rows, ms = started.elapsed().as_millis() as u64, "split written");
    }
    let written = outcome.map_err(|e| {
        tracing::warn!(error = %e, "split failed");
        Failure::from(&e)
    });
    WriteResult { round_id: split.round_id, index: split.index, ranges: split.ranges, written }
}

/// How many ranges of a packed split are fetched ahead of the one being written, and so the most buckets one
/// gathered request asks for: a packed split is many small ranges, and a round trip each would leave the writer
/// waiting on every one (with 64, 10,000 buckets of 50 rows tiered in 25-40% less time than with 16; 256 did no
/// better).
/// The ranges fetched at once share `fetch_max_bytes` (at least [`MIN_PACKED_FETCH_BYTES`] each), so a packed
/// split has about `fetch_max_bytes` in flight, as a split of one range does (more only when that is under 4 MiB).
const RANGES_FETCHED_AHEAD: usize = 64;
/// The least a packed split's range fetches at a time.
const MIN_PACKED_FETCH_BYTES: i32 = 64 << 10;

/// Writes the split's ranges through one writer and returns the files with the offset reached in each range (its
/// stop unless the deadline came).
///
/// The loop's time is split three ways in the job's metrics: waiting for the fetch task, decoding, encoding.
async fn write_split(ctx: &JobContext, split: &Split, worker: usize) -> Result<(WrittenData, Vec<i64>)> {
    let first = split.ranges.first().ok_or_else(|| Error::new(ErrorKind::Internal, "a split without a range"))?;
    let writer_ctx = WriterContext {
        partition_name: split.partition_name.clone(),
        bucket: first.bucket.bucket,
        file_prefix: format!("{}-s{}-w{worker}-{}", split.round_id, split.index, uuid::Uuid::new_v4().simple()),
    };
    let mut writer = ctx.bounded("opening a lake writer", ctx.lake.create_writer(&split.table, writer_ctx)).await?;
    let mut gathering = Gathering { writer: writer.as_mut(), pending: Vec::new(), rows: 0, bytes: 0 };
    let filled = match fill_ranges(ctx, split, &mut gathering).await {
        Ok(reached) => gathering.flush(ctx).await.map(|()| reached),
        Err(e) => Err(e),
    };
    match filled {
        Ok(reached) => {
            let closing = Instant::now();
            let written = ctx.bounded("closing lake files", writer.complete()).await?;
            ctx.metrics.add_split_work(SplitWork::EncodeWrite, closing.elapsed());
            Ok((written, reached))
        }
        Err(e) => {
            // Files of a failed split are never committed: delete them now rather than leave them to the sweep.
            if let Err(cleanup) = ctx.bounded("deleting a failed split's files", writer.abort()).await {
                tracing::warn!(error = %cleanup, "could not delete the files of a failed split");
            }
            Err(e)
        }
    }
}

/// Reads the split's ranges in order into `writer`, each fetched a few ranges ahead; returns the offset reached in
/// each. Past the deadline, a range stops where it is; a leading split's ranges (each starts its bucket's range)
/// are read once regardless, so every round moves every bucket it reads.
async fn fill_ranges(ctx: &JobContext, split: &Split, writer: &mut Gathering<'_>) -> Result<Vec<i64>> {
    let schema = lake_schema(&split.table.descriptor);
    let mut reached = Vec::with_capacity(split.ranges.len());
    let mut pending = split.ranges.iter();
    let mut ahead: VecDeque<(SplitRange, Fetching)> = VecDeque::new();
    let fetcher = Fetcher::for_split(ctx, split);
    loop {
        while ahead.len() < RANGES_FETCHED_AHEAD
            && let Some(range) = pending.next()
        {
            ahead.push_back((*range, Fetching::start(ctx, split, range, fetcher.clone())));
        }
        let Some((range, fetching)) = ahead.pop_front() else { return Ok(reached) };
        reached.push(fill(ctx, split, &schema, &range, fetching, writer).await?);
    }
}

/// Rows handed to the lake writer at once. Small stored batches and a packed split's small ranges arrive as slices
/// of a few rows to a few hundred, and every writer call costs something of its own (Paimon checks and normalizes
/// each batch, the Parquet writer starts a new set of pages), so slices are gathered up to this many rows first,
/// or [`WRITE_BYTES`] of the memory they hold, whichever comes first.
const WRITE_ROWS: usize = 8192;
const WRITE_BYTES: usize = 8 << 20;

/// A split's writer, with the slices not yet handed to it.
struct Gathering<'w> {
    writer: &'w mut dyn crate::lake::LakeWriter,
    pending: Vec<RecordBatch>,
    rows: usize,
    /// The memory the pending slices hold (a slice holds its whole batch's buffers).
    bytes: usize,
}

impl Gathering<'_> {
    /// Writes `batch`, or keeps it until enough is pending; a batch that is big enough alone goes straight through.
    async fn write(&mut self, ctx: &JobContext, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() >= WRITE_ROWS {
            self.flush(ctx).await?;
            return ctx.bounded("writing lake files", self.writer.write(batch)).await;
        }
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        self.pending.push(batch);
        if self.rows >= WRITE_ROWS || self.bytes >= WRITE_BYTES { self.flush(ctx).await } else { Ok(()) }
    }

    /// Hands the pending slices to the writer as one batch.
    async fn flush(&mut self, ctx: &JobContext) -> Result<()> {
        let batch = match self.pending.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            [first, ..] => arrow::compute::concat_batches(&first.schema(), &self.pending)
                .map_err(|e| Error::new(ErrorKind::Internal, "gathering rows for the lake writer").with_source(e))?,
        };
        self.pending.clear();
        (self.rows, self.bytes) = (0, 0);
        ctx.bounded("writing lake files", self.writer.write(batch)).await
    }
}

/// A range's fetch task, a bounded channel ahead of the writer; stopped when dropped (a split that failed leaves
/// no fetch running).
struct Fetching {
    rx: tokio::sync::mpsc::Receiver<Result<LogBatch>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetching {
    /// Starts fetching `range` of `split`, until the split's deadline (once even past it, if the split leads).
    fn start(ctx: &JobContext, split: &Split, range: &SplitRange, fetcher: Fetcher) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let bucket = (split.table.table_id, range.bucket.partition_id, range.bucket.bucket);
        let until = Deadline { at_ms: split.deadline_ms, read_once: split.leads };
        // The ranges fetched at once share the fetch size (a one-range split has it all).
        let sharing = split.ranges.len().clamp(1, RANGES_FETCHED_AHEAD) as i32;
        let max_bytes = match sharing {
            1 => ctx.config.fetch_max_bytes,
            _ => (ctx.config.fetch_max_bytes / sharing).max(MIN_PACKED_FETCH_BYTES),
        };
        let reader = LogReader::new(ctx.client.clone(), bucket, range.start, Some(range.stop), max_bytes);
        Fetching { rx, task: tokio::spawn(fetch_range(fetcher, reader, until, tx)) }
    }
}

/// How a split's ranges reach the cluster: a one-range split fetches alone; a packed split's range fetch tasks ask
/// a gathering task, which sends the asks that wait when its previous request returns as one multi-bucket fetch
/// ([`TieringCluster::fetch_many`], `fetch_max_bytes` in all), so a thousand small ranges cost tens of requests,
/// not a thousand. One request is in flight per split; the asks name distinct buckets (a packed split holds a
/// bucket's whole range).
#[derive(Clone)]
enum Fetcher {
    Alone,
    Gathered(Arc<Gatherer>),
}

/// A packed split's gathering task, stopped when the split and its ranges' fetches let go of it.
struct Gatherer {
    asks: tokio::sync::mpsc::Sender<Asked>,
    task: tokio::task::JoinHandle<()>,
}

/// An ask and where its answer goes.
type Asked = (FetchAsk, tokio::sync::oneshot::Sender<Result<FetchedLog>>);

impl Drop for Gatherer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetcher {
    fn for_split(ctx: &JobContext, split: &Split) -> Self {
        if split.ranges.len() < 2 {
            return Fetcher::Alone;
        }
        let (asks, waiting) = tokio::sync::mpsc::channel(RANGES_FETCHED_AHEAD);
        let task = tokio::spawn(gather_fetches(ctx.client.clone(), waiting, ctx.config.fetch_max_bytes));
        Fetcher::Gathered(Arc::new(Gatherer { asks, task }))
    }

    /// The reader's next batches; gathered, `Some` of none when the request's bytes went to other buckets.
    async fn next(&self, reader: &mut LogReader) -> Result<Option<Vec<LogBatch>>> {
        let Fetcher::Gathered(gatherer) = self else { return reader.next().await };
        let Some(ask) = reader.ask() else { return Ok(None) };
        let stopped = || Error::new(ErrorKind::Internal, "the split's gathered fetches stopped");
        let (reply, answer) = tokio::sync::oneshot::channel();
        gatherer.asks.send((ask, reply)).await.map_err(|_| stopped())?;
        reader.take(answer.await.map_err(|_| stopped())??)
    }
}

/// The most buckets one gathered fetch asks for: every range fetched ahead.
const BUCKETS_PER_FETCH: usize = RANGES_FETCHED_AHEAD;

/// Sends the asks waiting as one multi-bucket fetch, then the next, until every range's fetch let go.
async fn gather_fetches(
    client: Arc<dyn TieringCluster>,
    mut waiting: tokio::sync::mpsc::Receiver<Asked>,
    max_bytes: i32,
) {
    while let Some(first) = waiting.recv().await {
        // The split's other ranges ask at about the same time (at its start, after each answer): let them.
        tokio::task::yield_now().await;
        let mut asked = vec![first];
        while asked.len() < BUCKETS_PER_FETCH
            && let Ok(next) = waiting.try_recv()
        {
            asked.push(next);
        }
        let asks: Vec<FetchAsk> = asked.iter().map(|(ask, _)| *ask).collect();
        let answers = client.fetch_many(&asks, max_bytes).await.and_then(|answers| answers_checked(&asks, answers));
        match answers {
            Ok(answers) => asked.into_iter().zip(answers).for_each(|((_, reply), answer)| {
                let _ = reply.send(answer);
            }),
            Err(e) => asked.into_iter().for_each(|(_, reply)| {
                let _ = reply.send(Err(e.shared()));
            }),
        }
    }
}

/// When a range's fetching stops short of its stop offset.
#[derive(Clone, Copy)]
struct Deadline {
    at_ms: i64,
    /// Fetch once even past it: a split that starts past its deadline (its worker busy, the round's planning slow)
    /// would otherwise read nothing, and a round of nothing is re-queued at once to meet the same fate, for ever.
    read_once: bool,
}

/// Reads `range` of the split into `writer` as `fetching` brings it; returns the offset reached.
async fn fill(
    ctx: &JobContext,
    split: &Split,
    schema: &arrow::datatypes::SchemaRef,
    range: &SplitRange,
    mut fetching: Fetching,
    writer: &mut Gathering<'_>,
) -> Result<i64> {
    let metrics = &ctx.metrics;
    let mut clock = Instant::now();
    let mut lap =
        |work: SplitWork| metrics.add_split_work(work, std::mem::replace(&mut clock, Instant::now()).elapsed());
    // A primary-key split's changes are summed by key first; only the net effect is written, at the end.
    let mut keyed =
        split.table.descriptor.has_primary_key().then(|| Consolidator::new(&split.table.descriptor)).transpose()?;
    if let (Some(changes), Some(snapshot)) = (&mut keyed, split.snapshot) {
        ctx.metrics.snapshot_splits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for index in 0..snapshot.batch_count {
            let bucket = (split.table.table_id, range.bucket.partition_id, range.bucket.bucket);
            let (batches, _) = ctx.client.kv_snapshot_batch(bucket, snapshot.snapshot_id, index).await?;
            lap(SplitWork::FetchWait);
            for batch in &batches {
                changes.add_snapshot(batch)?;
            }
            lap(SplitWork::EncodeWrite);
        }
    }
    let mut batches = 0u64;
    let mut reached = range.start;
    while let Some(stored) = fetching.rx.recv().await {
        let stored = stored?;
        lap(SplitWork::FetchWait);
        if let Some(reason) = ctx.rounds.fenced(split.table.table_id, &split.round_id) {
            return Err(Error::new(ErrorKind::FencedTieringEpoch, format!("the split stops early: {reason}")));
        }
        let batch = stored.read(&split.table.descriptor)?;
        lap(SplitWork::Decode);
        let row_offset = stored.base_offset;
        let rows = batch.num_rows() as i64;
        // Only the range's own rows: the first and last stored batches may stick out of it.
        let (lo, hi) = (reached.max(row_offset), range.stop.min(row_offset + rows));
        if lo < hi {
            let slice = batch.slice((lo - row_offset) as usize, (hi - lo) as usize);
            match &mut keyed {
                Some(changes) => changes.add_changelog(&slice, lo, stored.append_timestamp)?,
                None => {
                    let rows = with_system_columns(schema, &slice, range.bucket.bucket, lo, stored.append_timestamp)?;
                    writer.write(ctx, rows).await?;
                }
            }
        }
        if let Some(end) = stored.end_offset() {
            reached = reached.max(end.min(range.stop));
        }
        lap(SplitWork::EncodeWrite);
        batches += 1;
        if batches == 1 {
            failpoint::hit("mid-split");
        }
    }
    (&mut fetching.task).await.map_err(|e| Error::new(ErrorKind::Internal, format!("fetch task failed: {e}")))??;
    lap(SplitWork::FetchWait);
    if let Some(changes) = keyed {
        ctx.metrics.changes_read.fetch_add(changes.changes(), std::sync::atomic::Ordering::Relaxed);
        if let Some(net) = changes.finish(&split.table.descriptor, range.bucket.bucket)? {
            writer.write(ctx, net).await?;
        }
    }
    lap(SplitWork::EncodeWrite);
    Ok(reached)
}

/// Fetches the stored batches that hold the reader's range, in order, as the cluster sent them, ahead of the writer.
async fn fetch_range(
    fetcher: Fetcher,
    mut reader: LogReader,
    until: Deadline,
    tx: tokio::sync::mpsc::Sender<Result<LogBatch>>,
) -> Result<()> {
    let mut fetched = false;
    loop {
        // The round's time is up: the range ends where it is.
        if (fetched || !until.read_once) && crate::model::now_ms() >= until.at_ms {
            return Ok(());
        }
        failpoint::slow_fetch().await;
        let batches = match fetcher.next(&mut reader).await {
            Ok(Some(batches)) => batches,
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Ok(());
            }
        };
        // Read once means batches read: an answer whose bytes went to other buckets does not count.
        fetched |= !batches.is_empty();
        for batch in batches {
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(()); // the writer failed and stopped listening
            }
        }
    }
}
