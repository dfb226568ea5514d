//! Split generation: the lake's tiered offsets against the buckets' current offsets.
//!
//! For each bucket (of each partition): `start` = the lake's offset for it, or the log start when the lake has
//! never seen it; `stop` = the high watermark now. `start < stop` gives the range `[start, stop)`; anything else gives
//! none. Data that arrives later belongs to the next round. A range longer than `split_rows` is cut into contiguous
//! sub-ranges, each its own split, so one busy bucket keeps several workers busy; the round still commits them all in
//! one snapshot.
//!
//! Small ranges packed: when a table's lake files are not per bucket (Paimon's bucket-unaware append tables, which
//! log tables become), ranges that need no cut are packed per partition into about one split per worker, each
//! written as one file set ([`pieces`]); a round over 1,000 buckets of one partition with a few rows each then
//! writes a file set per worker, not a thousand files.
//!
//! Primary-key tables: a bucket the lake has never seen that has a KV snapshot starts from the snapshot — its split
//! reads the snapshot, then the changelog from the snapshot's log offset (Fluss's snapshot split followed by a log
//! split, here one split so one writer sees all of the bucket's changes). A primary-key bucket's range is never cut:
//! its changes are consolidated by key before writing, and a Paimon bucket takes one writer per commit.

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind, Result};
use crate::lake::{BucketOffset, TableBucket, TableContext, TieredSnapshot};
use crate::model::tiering::TieringCluster;

use super::types::{KvSnapshotRef, RoundPlan, Split, SplitRange};

/// A bucket's place in the cluster's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    pub bucket: TableBucket,
    pub partition_name: Option<String>,
    pub log_start: i64,
    pub high_watermark: i64,
    /// The latest KV snapshot of a primary-key bucket.
    pub kv_snapshot: Option<KvSnapshotRef>,
}

/// A range to tier: the changelog `[start, stop)` of a bucket, after its KV snapshot when it starts from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub state: BucketState,
    pub start: i64,
    pub stop: i64,
    pub snapshot: Option<KvSnapshotRef>,
}

/// The ranges to tier given what the lake holds. A lake ahead of the cluster means the cluster lost acknowledged
/// data (or the lake belongs to another cluster), and a log start past the lake's offset means records were
/// removed before they were tiered: both are errors, never silent skips.
pub fn ranges(buckets: &[BucketState], lake: &BTreeMap<TableBucket, i64>) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for b in buckets {
        // Never tiered, with a snapshot: the snapshot, then the changelog after it.
        if let (None, Some(s)) = (lake.get(&b.bucket), b.kv_snapshot)
            && s.log_offset <= b.high_watermark
        {
            out.push(Range { state: b.clone(), start: s.log_offset, stop: b.high_watermark, snapshot: Some(s) });
            continue;
        }
        let start = match lake.get(&b.bucket) {
            Some(&tiered) if tiered > b.high_watermark => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!(
                        "the lake holds bucket {:?} up to offset {tiered}, beyond the cluster's high watermark {}",
                        b.bucket, b.high_watermark
                    ),
                ));
            }
            Some(&tiered) if tiered < b.log_start => {
                // Records the cluster removed (retention) before they reached the lake: tiering on from the log
                // start would skip them silently.
                return Err(Error::new(
                    ErrorKind::OffsetOutOfRange,
                    format!(
                        "bucket {:?}{} lost offsets [{tiered}, {}) ({} records): the cluster removed them before they \
                         reached the lake",
                        b.bucket,
                        b.partition_name.as_deref().map(|p| format!(" of partition {p}")).unwrap_or_default(),
                        b.log_start,
                        b.log_start - tiered
                    ),
                ));
            }
            Some(&tiered) => tiered,
            None => b.log_start,
        };
        if start < b.high_watermark {
            out.push(Range { state: b.clone(), start, stop: b.high_watermark, snapshot: None });
        }
    }
    Ok(out)
}

/// A planned round: what the committer needs, and the splits.
pub struct Planned {
    pub plan: RoundPlan,
    pub splits: Vec<Split>,
    /// The table's end offsets and the lake's offsets, summed over buckets (for the lag metric).
    pub end_total: i64,
    pub tiered_total: i64,
}

/// Cuts `[start, stop)` into contiguous pieces of at most `split_rows` offsets.
pub fn cut(start: i64, stop: i64, split_rows: u64) -> Vec<(i64, i64)> {
    let step = split_rows.clamp(1, i64::MAX as u64) as i64;
    let mut pieces = Vec::new();
    let mut lo = start;
    while lo < stop {
        let hi = stop.min(lo.saturating_add(step));
        pieces.push((lo, hi));
        lo = hi;
    }
    pieces
}

/// What one split reads: its partition's ranges, and the KV snapshot before them (a primary-key bucket new to the
/// lake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub partition_name: Option<String>,
    pub ranges: Vec<SplitRange>,
    pub snapshot: Option<KvSnapshotRef>,
    /// Its first range starts its bucket's range ([`Split::leads`]).
    pub leads: bool,
}

/// The round's splits: a primary-key bucket's range whole (its changes are consolidated by one writer), a log
/// bucket's cut into pieces of at most `split_rows`. When the table's lake files span buckets (`pack`), the
/// ranges that needed no cut are packed, per partition, into about `workers` splits of at most `split_rows` rows
/// each, so a round of many small buckets writes a file set per worker, not one per bucket. A bucket with a packed
/// range has no other range in the round (the committer relies on it).
pub fn pieces(ranges: &[Range], keyed: bool, pack: bool, split_rows: u64, workers: usize) -> Vec<Piece> {
    let one = |r: &Range, (start, stop): (i64, i64), snapshot| Piece {
        partition_name: r.state.partition_name.clone(),
        ranges: vec![SplitRange { bucket: r.state.bucket, start, stop }],
        snapshot,
        leads: start == r.start,
    };
    let rows = |r: &Range| u64::try_from(r.stop - r.start).unwrap_or(0);
    let mut out = Vec::new();
    let mut small: BTreeMap<Option<i64>, Vec<&Range>> = BTreeMap::new();
    for r in ranges {
        if keyed {
            out.push(one(r, (r.start, r.stop), r.snapshot));
        } else if pack && r.snapshot.is_none() && rows(r) <= split_rows {
            small.entry(r.state.bucket.partition_id).or_default().push(r);
        } else {
            out.extend(cut(r.start, r.stop, split_rows).into_iter().map(|piece| one(r, piece, None)));
        }
    }
    for group in small.into_values() {
        let total: u64 = group.iter().map(|r| rows(r)).sum();
        // About one pack per worker, none over split_rows.
        let target = total.div_ceil(workers.max(1) as u64).clamp(1, split_rows.max(1));
        let mut pack: Option<(Piece, u64)> = None;
        for r in group {
            if pack.as_ref().is_some_and(|(_, filled)| filled + rows(r) > split_rows) {
                out.extend(pack.take().map(|(piece, _)| piece));
            }
            let (piece, filled) = pack.get_or_insert_with(|| {
                let partition_name = r.state.partition_name.clone();
                (Piece { partition_name, ranges: Vec::new(), snapshot: None, leads: true }, 0)
            });
            piece.ranges.push(SplitRange { bucket: r.state.bucket, start: r.start, stop: r.stop });
            *filled += rows(r);
            if *filled >= target {
                out.extend(pack.take().map(|(piece, _)| piece));
            }
        }
        out.extend(pack.map(|(piece, _)| piece));
    }
    out
}

/// Who plans a round, and how.
pub struct RoundRequest {
    pub table_id: i64,
    pub path: crate::model::table::TablePath,
    pub tiering_epoch: i64,
    pub coordinator_epoch: i32,
    pub round_id: String,
    /// Routing key of the round's first split (later splits take the next keys).
    pub route_base: u64,
    pub split_rows: u64,
    /// The job's workers: a round packs small ranges into about this many splits.
    pub workers: usize,
    /// When the round started (ms since the epoch): it must end one freshness interval later, or `max_duration`
    /// later when the job sets one.
    pub started_ms: i64,
    pub max_duration: Option<std::time::Duration>,
    /// How long preparing the lake table may take.
    pub lake_timeout: std::time::Duration,
}

/// Plans one round: reads offsets, prepares the lake table (unless the table never had data), cuts splits.
pub async fn plan_round(
    client: &dyn TieringCluster,
    lake: &dyn crate::lake::LakeTieringFactory,
    req: RoundRequest,
) -> Result<Planned> {
    let RoundRequest {
        table_id,
        path,
        tiering_epoch,
        coordinator_epoch,
        round_id,
        route_base,
        split_rows,
        workers,
        started_ms,
        max_duration,
        lake_timeout,
    } = req;
    let (current_id, descriptor) = client.table_info(&path).await?;
    if current_id != table_id {
        return Err(Error::new(
            ErrorKind::TableNotExist,
            format!("table {path} was dropped and re-created (id {table_id} is now {current_id})"),
        ));
    }
    let max_duration = match max_duration {
        Some(d) => d,
        None => descriptor.freshness()?,
    };
    let deadline_ms = started_ms.saturating_add(max_duration.as_millis() as i64);
    let table = TableContext { table_id, path: path.clone(), descriptor };
    let partitions: Vec<(Option<i64>, Option<String>)> = if table.descriptor.is_partitioned() {
        client.partitions(&path).await?.into_iter().map(|(id, name)| (Some(id), Some(name))).collect()
    } else {
        vec![(None, None)]
    };
    let bucket_ids: Vec<i32> = (0..table.descriptor.buckets as i32).collect();
    let mut states = Vec::new();
    for (partition_id, partition_name) in partitions {
        let ends = client.list_offsets(table_id, partition_id, &bucket_ids, true).await?;
        let starts = client.list_offsets(table_id, partition_id, &bucket_ids, false).await?;
        // A short answer would leave buckets out of the round unseen, and the job would call the table caught up.
        if ends.len() != bucket_ids.len() || starts.len() != bucket_ids.len() {
            return Err(Error::new(
                ErrorKind::CorruptMessage,
                format!(
                    "the cluster answered {} end and {} start offsets for the {} buckets of {path}",
                    ends.len(),
                    starts.len(),
                    bucket_ids.len()
                ),
            ));
        }
        for ((bucket, log_start), high_watermark) in bucket_ids.iter().zip(starts).zip(ends) {
            states.push(BucketState {
                bucket: TableBucket { partition_id, bucket: *bucket },
                partition_name: partition_name.clone(),
                log_start,
                high_watermark,
                kv_snapshot: None,
            });
        }
    }
    // A table that never had a record costs nothing more: no lake table, no lake reads.
    if states.iter().all(|b| b.high_watermark == 0) {
        let plan = RoundPlan {
            table,
            tiering_epoch,
            coordinator_epoch,
            round_id,
            splits: 0,
            base: None,
            buckets: vec![],
            cluster_behind: false,
        };
        return Ok(Planned { plan, splits: vec![], end_total: 0, tiered_total: 0 });
    }
    let what = format!("preparing lake table {path}");
    let base: Option<TieredSnapshot> = super::bounded(lake_timeout, &what, lake.prepare_table(&table)).await?;
    let cluster_snapshot = client.lake_snapshot(&path).await?.map(|s| s.snapshot_id);
    let lake_offsets = base.as_ref().map(|b| b.marker.offset_map()).unwrap_or_default();
    if table.descriptor.has_primary_key() {
        add_kv_snapshots(client, &table, &mut states, &lake_offsets).await?;
    }
    let ranges = ranges(&states, &lake_offsets)?;
    let pieces =
        pieces(&ranges, table.descriptor.has_primary_key(), lake.files_span_buckets(&table), split_rows, workers);
    let splits: Vec<Split> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| Split {
            table: table.clone(),
            tiering_epoch,
            round_id: round_id.clone(),
            index: i as u32,
            partition_name: piece.partition_name,
            ranges: piece.ranges,
            snapshot: piece.snapshot,
            deadline_ms,
            leads: piece.leads,
            route: route_base + i as u64,
        })
        .collect();
    let buckets = ranges
        .iter()
        .map(|r| BucketOffset {
            partition_id: r.state.bucket.partition_id,
            partition_name: r.state.partition_name.clone(),
            bucket: r.state.bucket.bucket,
            offset: r.stop,
        })
        .collect();
    // The lake is the truth: a cluster that records another snapshot than its latest tiering one learns that one
    // (Iceberg's snapshot ids are not ordered, so "another", not "an older").
    let cluster_behind = base.as_ref().is_some_and(|b| Some(b.snapshot_id) != cluster_snapshot);
    let splits_count = splits.len() as u32;
    let plan = RoundPlan {
        table,
        tiering_epoch,
        coordinator_epoch,
        round_id,
        splits: splits_count,
        base,
        buckets,
        cluster_behind,
    };
    let end_total = states.iter().map(|b| b.high_watermark).sum();
    let tiered_total = lake_offsets.values().sum();
    Ok(Planned { plan, splits, end_total, tiered_total })
}

/// The KV snapshots of a primary-key table's buckets that the lake has never seen (and that hold changes): such a
/// bucket starts from its snapshot. A snapshot newer than the end offset read earlier (one taken just now, as a
/// ScanKv is) moves that bucket's end to the cluster's current one, which is at least the snapshot's offset.
async fn add_kv_snapshots(
    client: &dyn TieringCluster,
    table: &TableContext,
    states: &mut [BucketState],
    lake: &BTreeMap<TableBucket, i64>,
) -> Result<()> {
    let mut new: BTreeMap<(Option<i64>, Option<String>), Vec<i32>> = BTreeMap::new();
    for s in states.iter().filter(|s| s.high_watermark > 0 && !lake.contains_key(&s.bucket)) {
        new.entry((s.bucket.partition_id, s.partition_name.clone())).or_default().push(s.bucket.bucket);
    }
    for ((partition_id, partition_name), buckets) in new {
        for (bucket, snapshot) in client.kv_snapshots(&table.path, partition_name.as_deref(), &buckets).await? {
            let Some(state) = states.iter_mut().find(|s| s.bucket == TableBucket { partition_id, bucket }) else {
                continue;
            };
            if let Some(s) = snapshot
                && s.log_offset > state.high_watermark
            {
                let end = client.list_offsets(table.table_id, partition_id, &[bucket], true).await?;
                let end = end.first().copied().unwrap_or(0);
                if end < s.log_offset {
                    // Planning on without the snapshot would read only the log, which may have lost older changes.
                    return Err(Error::new(
                        ErrorKind::OffsetOutOfRange,
                        format!(
                            "bucket {bucket} of {}: a KV snapshot at offset {} but the log ends at {end}",
                            table.path, s.log_offset
                        ),
                    ));
                }
                state.high_watermark = end;
            }
            state.kv_snapshot = snapshot;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bucket: i32, log_start: i64, high_watermark: i64) -> BucketState {
        BucketState {
            bucket: TableBucket { partition_id: None, bucket },
            partition_name: None,
            log_start,
            high_watermark,
            kv_snapshot: None,
        }
    }

    /// The reference: a bucket needs tiering exactly when the lake lags its high watermark.
    #[test]
    fn matches_a_simple_reference_on_random_input() {
        let mut seed = 0x5EED_u64;
        let mut next = move |m: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as i64
        };
        for _ in 0..500 {
            let n = 1 + next(20) as i32;
            let buckets: Vec<BucketState> = (0..n).map(|b| state(b, 0, next(50))).collect();
            let lake: BTreeMap<TableBucket, i64> = buckets
                .iter()
                .filter_map(|b| {
                    let tiered = next(3) > 0;
                    let offset = next(b.high_watermark + 1);
                    tiered.then_some((b.bucket, offset))
                })
                .collect();
            let got = ranges(&buckets, &lake).expect("lake never ahead here");
            let expected: Vec<(i32, i64, i64)> = buckets
                .iter()
                .filter_map(|b| {
                    let start = lake.get(&b.bucket).copied().unwrap_or(0);
                    (start < b.high_watermark).then_some((b.bucket.bucket, start, b.high_watermark))
                })
                .collect();
            let got: Vec<(i32, i64, i64)> = got.iter().map(|r| (r.state.bucket.bucket, r.start, r.stop)).collect();
            assert_eq!(got, expected);
        }
    }

    /// Every offset to tier is in exactly one piece, whatever packs them; a packed bucket is in no other piece.
    #[test]
    fn pieces_cover_every_range_once_and_pack_small_ones_per_worker() {
        let range = |bucket, start, stop| Range { state: state(bucket, 0, stop), start, stop, snapshot: None };
        // 1,000 buckets of 10 rows, and one of 2,500 (cut at 1,000).
        let mut ranges: Vec<Range> = (0..1000).map(|b| range(b, 5, 15)).collect();
        ranges.push(range(1000, 0, 2500));
        for (pack, workers) in [(false, 2), (true, 1), (true, 2), (true, 7)] {
            let got = pieces(&ranges, false, pack, 1000, workers);
            let mut covered: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
            for p in &got {
                assert!(!p.ranges.is_empty());
                for r in &p.ranges {
                    covered.entry(r.bucket.bucket).or_default().push((r.start, r.stop));
                    if p.ranges.len() > 1 {
                        assert_eq!(r.stop - r.start, 10, "only whole, uncut ranges are packed");
                    }
                }
            }
            for (bucket, mut pieces) in covered {
                pieces.sort();
                let (start, stop) = if bucket == 1000 { (0, 2500) } else { (5, 15) };
                assert_eq!(pieces.first().map(|p| p.0), Some(start));
                assert!(pieces.windows(2).all(|w| w[0].1 == w[1].0), "bucket {bucket}: contiguous");
                assert_eq!(pieces.last().map(|p| p.1), Some(stop));
            }
            // 10,000 small rows: at least one pack per worker, at most 1,000 rows per pack; bucket 1000 in 3 pieces.
            let expected = if pack { workers.max(10) + 3 } else { 1003 };
            assert!(got.len() <= expected, "pack {pack}, {workers} workers: {} splits", got.len());
        }
        // Packs stay within a partition.
        let mut other = range(0, 0, 10);
        other.state.bucket.partition_id = Some(9);
        let got = pieces(&[range(0, 0, 10), other], false, true, 1000, 1);
        assert_eq!(got.len(), 2, "one pack per partition");
        // A primary-key range is never cut or packed, and keeps its snapshot.
        let keyed = pieces(&[range(0, 0, 5000), range(1, 0, 3)], true, true, 1000, 1);
        assert_eq!(keyed.iter().map(|p| p.ranges.len()).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn cuts_cover_the_range_exactly() {
        for (start, stop, rows) in [(0, 10, 3), (5, 6, 1), (0, 1_000_000, 1_000_000), (7, 7, 4), (3, 100, 1000)] {
            let pieces = cut(start, stop, rows);
            let mut next = start;
            for (lo, hi) in &pieces {
                assert_eq!(*lo, next, "contiguous");
                assert!(hi > lo && (hi - lo) as u64 <= rows, "non-empty and at most {rows}");
                next = *hi;
            }
            assert_eq!(next, stop.max(start), "covers [{start}, {stop})");
        }
        assert_eq!(cut(0, 10, 3).len(), 4);
    }

    #[test]
    fn a_keyed_bucket_new_to_the_lake_starts_from_its_snapshot() {
        let snapshot = KvSnapshotRef { snapshot_id: 3, log_offset: 40, batch_count: 2, held_by_planner: false };
        let with_snapshot = BucketState { kv_snapshot: Some(snapshot), ..state(0, 0, 50) };
        let got = ranges(std::slice::from_ref(&with_snapshot), &BTreeMap::new()).expect("ranges");
        assert_eq!((got[0].start, got[0].stop, got[0].snapshot), (40, 50, Some(snapshot)));
        // Nothing changed since the snapshot: the snapshot alone is still to tier.
        let idle = BucketState { kv_snapshot: Some(snapshot), ..state(0, 0, 40) };
        assert_eq!(ranges(&[idle], &BTreeMap::new()).expect("ranges")[0].snapshot, Some(snapshot));
        // Once the lake has the bucket, only the changelog after the lake's offset counts.
        let lake = BTreeMap::from([(with_snapshot.bucket, 45)]);
        let got = ranges(&[with_snapshot], &lake).expect("ranges");
        assert_eq!((got[0].start, got[0].snapshot), (45, None));
    }

    #[test]
    fn a_log_start_past_the_lake_offset_is_an_error_naming_the_lost_range() {
        let lake = BTreeMap::from([(TableBucket { partition_id: None, bucket: 0 }, 10)]);
        let err = ranges(&[state(0, 25, 40)], &lake).expect_err("records were lost");
        assert_eq!(err.kind(), ErrorKind::OffsetOutOfRange);
        assert!(err.to_string().contains("[10, 25) (15 records)"), "{err}");
        // A log start at the lake's offset loses nothing.
        assert_eq!(ranges(&[state(0, 10, 40)], &lake).expect("nothing lost")[0].start, 10);
    }

    #[test]
    fn a_lake_ahead_of_the_cluster_is_an_error() {
        let lake = BTreeMap::from([(TableBucket { partition_id: None, bucket: 0 }, 10)]);
        assert!(ranges(&[state(0, 0, 5)], &lake).is_err());
        assert!(ranges(&[state(0, 0, 10)], &lake).expect("caught up").is_empty());
    }
}
