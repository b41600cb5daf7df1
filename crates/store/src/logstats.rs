//! Request-log statistics (`GET /v1/logs/stats`): the rollups kept at ingest, and the merge
//! that answers a query from them or from the records themselves.
//!
//! **Rollups.** Every stored request log adds to one rollup [`Bucket`] per [`Level`]
//! (minute, hour, day) of its org: a bucket holds a [`Cell`] per route pattern, method and
//! status code (the bounded dimensions) seen in it, each with the exact count, 4xx and 5xx
//! counts, how many had a duration, the exact largest duration and a [`Sketch`] of the
//! durations. A bucket is stored as one value ([`Bucket::encode`]) that also carries its
//! total and its per-route, per-method and per-status sums, so a query without filters reads
//! one small section per bucket. Backends write buckets in the same transaction as the
//! records they count.
//!
//! **Sketch.** Durations are bucketed as an HDR histogram with two significant digits
//! (the `hdrhistogram` crate's bucketing: every value maps to the highest value equivalent
//! to it, at most 1/128 above it, and values below 256 ms are exact). A cell keeps only its
//! non-empty buckets, as sorted `(value, count)` pairs, so merging cells is adding counts and
//! a quantile is the nearest-rank value over the merged buckets: within 1% of the exact
//! nearest-rank value, as HDR's own `value_at_quantile` is.
//!
//! **Queries.** A query whose filters and grouping are all bounded dimensions reads the rollup
//! buckets of the level that fits its interval; any other reads the matching records
//! themselves. Either read is bounded ([`MAX_ROWS`]), and a query that would need more is
//! refused with [`StatsError::TooLarge`].

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use apitrail_model::{LogFilter, RequestLog, Timestamp};

/// The most buckets one answer has (per series).
pub const MAX_BUCKETS: i64 = 1_500;
/// The most rows (stored rollup buckets or records) one query reads.
pub const MAX_ROWS: u32 = 1_000_000;
/// The most cells one rollup bucket holds: the records of further (route pattern, method,
/// status) combinations of that bucket count in the cell of their method and status
/// without a route pattern, so a client sending endless route patterns cannot grow a
/// bucket (nor the work of every write to it) without bound.
pub const MAX_CELLS: usize = 10_000;
/// The most series one answer has (`limit`), and the default.
pub const MAX_SERIES: u32 = 100;
/// The default `limit`.
pub const DEFAULT_SERIES: u32 = 10;

/// The granularity a rollup cell summarises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Level {
    /// Every level, finest first.
    pub const ALL: [Level; 3] = [Level::Minute, Level::Hour, Level::Day];

    /// The level's stored code.
    pub fn code(self) -> i16 {
        match self {
            Level::Minute => 0,
            Level::Hour => 1,
            Level::Day => 2,
        }
    }

    /// The length of a bucket, in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Level::Minute => 60_000,
            Level::Hour => 3_600_000,
            Level::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `t` (ms since the epoch).
    pub fn bucket_of(self, t: i64) -> i64 {
        t.div_euclid(self.millis()) * self.millis()
    }
}

/// The bucket width of a stats answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interval {
    /// `1m`.
    M1,
    /// `5m`.
    M5,
    /// `15m`.
    M15,
    /// `1h`.
    H1,
    /// `1d`.
    D1,
}

impl Interval {
    /// Every interval.
    pub const ALL: [Interval; 5] = [
        Interval::M1,
        Interval::M5,
        Interval::M15,
        Interval::H1,
        Interval::D1,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::D1 => "1d",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// The width in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Interval::M1 => 60_000,
            Interval::M5 => 300_000,
            Interval::M15 => 900_000,
            Interval::H1 => 3_600_000,
            Interval::D1 => 86_400_000,
        }
    }

    /// The coarsest rollup level whose buckets tile this interval's.
    pub fn level(self) -> Level {
        match self {
            Interval::M1 | Interval::M5 | Interval::M15 => Level::Minute,
            Interval::H1 => Level::Hour,
            Interval::D1 => Level::Day,
        }
    }

    /// `t` rounded down to a bucket start (UTC).
    pub fn floor(self, t: i64) -> i64 {
        t.div_euclid(self.millis()) * self.millis()
    }

    /// `t` rounded up to a bucket start (UTC).
    pub fn ceil(self, t: i64) -> i64 {
        let f = self.floor(t);
        if f == t { t } else { f + self.millis() }
    }
}

/// What a stats answer's series are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// `route_pattern`.
    RoutePattern,
    /// `method`.
    Method,
    /// `status_code`.
    StatusCode,
    /// `status_class` (`2xx`, `4xx`, ...).
    StatusClass,
    /// `api_key_id` (read from the records).
    ApiKeyId,
    /// `user_id` (read from the records).
    UserId,
    /// `origin` (read from the records).
    Origin,
}

impl GroupBy {
    /// Every grouping.
    pub const ALL: [GroupBy; 7] = [
        GroupBy::RoutePattern,
        GroupBy::Method,
        GroupBy::StatusCode,
        GroupBy::StatusClass,
        GroupBy::ApiKeyId,
        GroupBy::UserId,
        GroupBy::Origin,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::RoutePattern => "route_pattern",
            GroupBy::Method => "method",
            GroupBy::StatusCode => "status_code",
            GroupBy::StatusClass => "status_class",
            GroupBy::ApiKeyId => "api_key_id",
            GroupBy::UserId => "user_id",
            GroupBy::Origin => "origin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// Whether the rollups hold this dimension.
    pub fn in_rollups(self) -> bool {
        matches!(
            self,
            GroupBy::RoutePattern | GroupBy::Method | GroupBy::StatusCode | GroupBy::StatusClass
        )
    }

    /// The `request_logs` column a record-reading query selects for this grouping, for the
    /// ones the rollups lack.
    pub fn column(self) -> &'static str {
        self.as_str()
    }
}

/// A series' group value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupValue {
    /// No grouping, or a record without the field.
    Null,
    /// A status code.
    Code(u16),
    /// Text (a route, method, status class, key, user or origin).
    Text(String),
}

/// A validated stats query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    /// The bucket width.
    pub interval: Interval,
    /// First bucket's start (aligned to the interval).
    pub from: i64,
    /// End of the last bucket (aligned to the interval), exclusive.
    pub to: i64,
    /// The grouping, if any.
    pub group_by: Option<GroupBy>,
    /// The most series.
    pub limit: u32,
    /// The `/v1/logs` filters; its own `from`/`to` are ignored (the query's range rules).
    pub filter: LogFilter,
}

impl StatsQuery {
    /// The number of buckets.
    pub fn buckets(&self) -> i64 {
        (self.to - self.from) / self.interval.millis()
    }

    /// Whether the rollups can answer: every filter and the grouping are rollup dimensions.
    pub fn uses_rollups(&self) -> bool {
        let f = &self.filter;
        f.request_id.is_none()
            && f.auth_type.is_none()
            && f.api_key_id.is_none()
            && f.service_account_id.is_none()
            && f.user_id.is_none()
            && f.email.is_none()
            && self.group_by.is_none_or(GroupBy::in_rollups)
    }

    /// Which stored value of each rollup bucket the query needs: every cell with a filter,
    /// else the total or the sums of its grouping.
    pub fn rollup_part(&self) -> Part {
        let f = &self.filter;
        if f.method.is_some()
            || f.route_pattern.is_some()
            || f.status_min.is_some()
            || f.status_max.is_some()
        {
            return Part::Cells;
        }
        match self.group_by {
            None => Part::Total,
            Some(GroupBy::RoutePattern) => Part::Routes,
            Some(GroupBy::Method) => Part::Methods,
            Some(_) => Part::Statuses,
        }
    }

    /// The filter with the query's range as its time window.
    pub fn ranged_filter(&self) -> LogFilter {
        LogFilter {
            from: Timestamp::from_millis(self.from),
            to: Timestamp::from_millis(self.to),
            ..self.filter.clone()
        }
    }
}

/// Why a stats query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The query would read more than [`MAX_ROWS`] rows.
    #[error("the query would read more than {max} rows")]
    TooLarge {
        /// The bound.
        max: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// What a rollup cell (or a sum of cells) holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell {
    /// Records.
    pub count: u64,
    /// Records with a 4xx status.
    pub errors_4xx: u64,
    /// Records with a 5xx status.
    pub errors_5xx: u64,
    /// Records with a duration.
    pub timed: u64,
    /// The largest duration, `-1` when none had one.
    pub max_ms: i64,
    /// The durations.
    pub sketch: Sketch,
}

impl Cell {
    /// An empty cell.
    pub fn new_empty() -> Self {
        Self {
            max_ms: -1,
            ..Default::default()
        }
    }

    /// Adds one record's figures.
    pub fn add(&mut self, status: u16, duration_ms: Option<i64>) {
        self.count += 1;
        match status {
            400..=499 => self.errors_4xx += 1,
            500..=599 => self.errors_5xx += 1,
            _ => {}
        }
        if let Some(d) = duration_ms.filter(|d| *d >= 0) {
            self.timed += 1;
            self.max_ms = self.max_ms.max(d);
            self.sketch.record(d);
        }
    }

    /// Adds another cell.
    pub fn merge(&mut self, other: &Cell) {
        self.add_counts(other);
        self.sketch.merge(&other.sketch);
    }

    /// The answer's figures of this cell (folding its durations).
    fn figures(&mut self) -> Figures {
        let max = self.max_ms;
        Figures {
            count: self.count,
            errors_4xx: self.errors_4xx,
            errors_5xx: self.errors_5xx,
            quantiles: self.sketch.quantiles(self.timed, max),
            max_ms: (max >= 0).then_some(max),
        }
    }

    fn add_counts(&mut self, other: &Cell) {
        self.count += other.count;
        self.errors_4xx += other.errors_4xx;
        self.errors_5xx += other.errors_5xx;
        self.timed += other.timed;
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    fn encode_into(&mut self, out: &mut Vec<u8>) {
        for n in [self.count, self.errors_4xx, self.errors_5xx, self.timed] {
            put_varint(out, n);
        }
        put_varint(out, u64::try_from(self.max_ms + 1).unwrap_or(0));
        self.sketch.encode_into(out);
    }

    /// Decodes a cell's counts and adds its durations to `into` (a query's accumulator), so
    /// no sketch is allocated per stored cell.
    fn decode_into(r: &mut &[u8], into: &mut Sketch) -> Result<Cell, SketchError> {
        let mut cell = Cell::new_empty();
        cell.count = varint(r)?;
        cell.errors_4xx = varint(r)?;
        cell.errors_5xx = varint(r)?;
        cell.timed = varint(r)?;
        cell.max_ms = i64::try_from(varint(r)?).map_err(|_| SketchError("max overflows"))? - 1;
        into.merge_from(r)?;
        Ok(cell)
    }
}

/// A cell's key within its bucket: route pattern (`""` for none), method, status code.
pub type CellKey = (String, String, u16);

/// One rollup bucket of one org and level: a cell per (route pattern, method, status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    cells: BTreeMap<CellKey, Cell>,
}

/// The stored values of a [`Bucket`], each read alone: a query reads only the one it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One cell: the whole bucket (a query without filters or grouping).
    Total = 0,
    /// A cell per route pattern (text key).
    Routes = 1,
    /// A cell per method (text key).
    Methods = 2,
    /// A cell per status code (number key): groupings by status code or class.
    Statuses = 3,
    /// Every cell (route, method, status key): a query with a filter.
    Cells = 4,
}

impl Part {
    /// Every part, in the order of [`Encoded::values`].
    pub const ALL: [Part; 5] = [
        Part::Total,
        Part::Routes,
        Part::Methods,
        Part::Statuses,
        Part::Cells,
    ];

    /// The column a backend keeps the part in.
    pub fn column(self) -> &'static str {
        match self {
            Part::Total => "total",
            Part::Routes => "routes",
            Part::Methods => "methods",
            Part::Statuses => "statuses",
            Part::Cells => "cells",
        }
    }
}

/// The first byte of each encoded value of a bucket.
const BUCKET_FORMAT: u8 = 1;

/// A bucket as stored: one value per [`Part`], in the order of [`Part::ALL`] (see
/// [`Bucket::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The values.
    pub values: [Vec<u8>; 5],
}

impl Bucket {
    /// Adds one record.
    pub fn add(&mut self, route: Option<&str>, method: &str, status: u16, duration: Option<i64>) {
        self.cell(route.unwrap_or(""), method, status)
            .add(status, duration);
    }

    /// The cell of a key, made when missing; past [`MAX_CELLS`] a new key's records go to
    /// the cell of its method and status without a route pattern.
    fn cell(&mut self, route: &str, method: &str, status: u16) -> &mut Cell {
        let key = if self.cells.len() >= MAX_CELLS
            && !self
                .cells
                .contains_key(&(route.to_owned(), method.to_owned(), status))
        {
            (String::new(), method.to_owned(), status)
        } else {
            (route.to_owned(), method.to_owned(), status)
        };
        self.cells.entry(key).or_insert_with(Cell::new_empty)
    }

    /// Adds another bucket's cells.
    pub fn merge(&mut self, other: &Bucket) {
        for ((route, method, status), cell) in &other.cells {
            self.cell(route, method, *status).merge(cell);
        }
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The stored form: one value per [`Part`], each a format byte then its entries: the
    /// total's cell; per route, method or status a count then each key and cell; every cell
    /// with its route, method and status. Numbers are LEB128 varints, text is
    /// length-prefixed UTF-8.
    pub fn encode(&mut self) -> Encoded {
        let mut total = Cell::new_empty();
        let mut routes: BTreeMap<&str, Cell> = BTreeMap::new();
        let mut methods: BTreeMap<&str, Cell> = BTreeMap::new();
        let mut statuses: BTreeMap<u16, Cell> = BTreeMap::new();
        for ((route, method, status), cell) in &self.cells {
            total.merge(cell);
            routes
                .entry(route)
                .or_insert_with(Cell::new_empty)
                .merge(cell);
            methods
                .entry(method)
                .or_insert_with(Cell::new_empty)
                .merge(cell);
            statuses
                .entry(*status)
                .or_insert_with(Cell::new_empty)
                .merge(cell);
        }
        let mut values: [Vec<u8>; 5] = Default::default();
        for v in &mut values {
            v.push(BUCKET_FORMAT);
        }
        let [t, r, m, st, c] = &mut values;
        total.encode_into(t);
        put_varint(r, routes.len() as u64);
        for (route, mut cell) in routes {
            put_text(r, route);
            cell.encode_into(r);
        }
        put_varint(m, methods.len() as u64);
        for (method, mut cell) in methods {
            put_text(m, method);
            cell.encode_into(m);
        }
        put_varint(st, statuses.len() as u64);
        for (status, mut cell) in statuses {
            put_varint(st, u64::from(status));
            cell.encode_into(st);
        }
        put_varint(c, self.cells.len() as u64);
        for ((route, method, status), cell) in &mut self.cells {
            put_text(c, route);
            put_text(c, method);
            put_varint(c, u64::from(*status));
            cell.encode_into(c);
        }
        Encoded { values }
    }

    /// A stored bucket from its `cells` value (the sums are recomputed when it is encoded
    /// again).
    pub fn decode(bytes: &[u8]) -> Result<Bucket, SketchError> {
        let mut bucket = Bucket::default();
        let mut r = body(bytes)?;
        for _ in 0..varint(&mut r)? {
            let route = text(&mut r)?.to_owned();
            let method = text(&mut r)?.to_owned();
            let status = u16::try_from(varint(&mut r)?).map_err(|_| SketchError("status"))?;
            let mut sketch = Sketch::default();
            let mut cell = Cell::decode_into(&mut r, &mut sketch)?;
            sketch.normalize();
            cell.sketch = sketch;
            bucket.cells.insert((route, method, status), cell);
        }
        Ok(bucket)
    }
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn text<'a>(r: &mut &'a [u8]) -> Result<&'a str, SketchError> {
    let n = usize::try_from(varint(r)?).map_err(|_| SketchError("text length"))?;
    if r.len() < n {
        return Err(SketchError("truncated text"));
    }
    let (s, rest) = r.split_at(n);
    *r = rest;
    std::str::from_utf8(s).map_err(|_| SketchError("text is not UTF-8"))
}

/// The entries of a bucket's stored value (past its format byte).
fn body(bytes: &[u8]) -> Result<&[u8], SketchError> {
    let (&format, r) = bytes
        .split_first()
        .ok_or(SketchError("empty bucket value"))?;
    if format != BUCKET_FORMAT {
        return Err(SketchError("unknown bucket format"));
    }
    Ok(r)
}

/// The rollup buckets a set of records adds to.
#[derive(Debug, Default)]
pub struct Rollups {
    buckets: HashMap<(i64, Level, i64), Bucket>,
}

impl Rollups {
    /// No buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `log` of org `org` (the backend's org key) to its bucket at every level.
    pub fn add(&mut self, org: i64, log: &RequestLog) {
        self.add_parts(
            org,
            log.created_at.millis(),
            log.route_pattern.as_deref(),
            &log.method,
            log.status_code,
            log.duration_ms,
        );
    }

    /// Adds one record given by its parts (for backfills reading columns).
    pub fn add_parts(
        &mut self,
        org: i64,
        created_at: i64,
        route_pattern: Option<&str>,
        method: &str,
        status_code: u16,
        duration_ms: Option<i64>,
    ) {
        for level in Level::ALL {
            self.buckets
                .entry((org, level, level.bucket_of(created_at)))
                .or_default()
                .add(route_pattern, method, status_code, duration_ms);
        }
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Adds another set's buckets.
    pub fn merge(&mut self, other: Rollups) {
        for (key, bucket) in other.buckets {
            match self.buckets.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(&bucket),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(bucket);
                }
            }
        }
    }

    /// The buckets as `((org, level, bucket start), bucket)`, in key order, so writers lock
    /// rows in one order.
    pub fn into_sorted(self) -> Vec<((i64, Level, i64), Bucket)> {
        let mut buckets: Vec<_> = self.buckets.into_iter().collect();
        buckets.sort_unstable_by_key(|b| b.0);
        buckets
    }
}

/// Pairs after which [`Sketch::compact`] folds (an HDR histogram of every duration has about
/// 3,200 buckets).
const COMPACT_AT: usize = 16_384;

/// The quantiles every answer reports.
const QUANTILES: [f64; 4] = [0.50, 0.90, 0.95, 0.99];

/// An empty HDR histogram of the stats' configuration: two significant digits over every
/// duration the store accepts.
fn empty_histogram() -> hdrhistogram::Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    hdrhistogram::Histogram::new_with_max(u64::from(u32::MAX), 2)
        .expect("two significant digits up to u32::MAX is a valid HDR configuration")
}

/// The HDR bucketing (see [`empty_histogram`]).
fn hdr() -> &'static hdrhistogram::Histogram<u64> {
    static HDR: OnceLock<hdrhistogram::Histogram<u64>> = OnceLock::new();
    HDR.get_or_init(empty_histogram)
}

/// Durations as the non-empty buckets of an HDR histogram: `(highest equivalent value,
/// count)` pairs, sorted by value once [`Sketch::normalize`] ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sketch {
    pairs: Vec<(u64, u64)>,
    sorted: bool,
}

impl Sketch {
    /// Adds one duration.
    pub fn record(&mut self, ms: i64) {
        let v = hdr().highest_equivalent(u64::try_from(ms).unwrap_or(0));
        self.pairs.push((v, 1));
        self.sorted = false;
    }

    /// Adds another sketch's counts.
    pub fn merge(&mut self, other: &Sketch) {
        self.pairs.extend_from_slice(&other.pairs);
        self.sorted = self.pairs.is_empty();
    }

    /// Adds the counts of an encoded sketch.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), SketchError> {
        let mut r = bytes;
        self.merge_from(&mut r)?;
        if !r.is_empty() {
            return Err(SketchError("trailing bytes"));
        }
        Ok(())
    }

    /// Adds the counts of the encoded sketch at the start of `r`, and moves past it.
    fn merge_from(&mut self, r: &mut &[u8]) -> Result<(), SketchError> {
        let n = varint(r)?;
        let mut value = 0u64;
        for _ in 0..n {
            value = value
                .checked_add(varint(r)?)
                .ok_or(SketchError("value overflows"))?;
            let count = varint(r)?;
            self.pairs.push((value, count));
        }
        self.sorted = self.pairs.is_empty();
        Ok(())
    }

    /// Folds the pairs once they are many, so that memory holds at most a few times the
    /// histogram's non-empty buckets however many rows were merged.
    pub fn compact(&mut self) {
        if self.pairs.len() >= COMPACT_AT {
            self.normalize();
        }
    }

    /// Forgets every pair (keeping the allocation).
    pub fn clear(&mut self) {
        self.pairs.clear();
        self.sorted = true;
    }

    /// Sorts and folds equal values.
    pub fn normalize(&mut self) {
        if self.sorted {
            return;
        }
        // Stable sort: it merges the sorted runs that merged sketches are, rather than
        // sorting from scratch.
        self.pairs.sort_by_key(|p| p.0);
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.pairs.len());
        for &(v, c) in &self.pairs {
            match out.last_mut() {
                Some(last) if last.0 == v => last.1 += c,
                _ => out.push((v, c)),
            }
        }
        self.pairs = out;
        self.sorted = true;
    }

    /// The stored form: a varint count of pairs, then each value's increase over the last
    /// and its count, as varints.
    pub fn encode(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.pairs.len() * 3);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&mut self, out: &mut Vec<u8>) {
        self.normalize();
        put_varint(out, self.pairs.len() as u64);
        let mut last = 0;
        for &(v, c) in &self.pairs {
            put_varint(out, v - last);
            put_varint(out, c);
            last = v;
        }
    }

    /// The nearest-rank values of `QUANTILES` (for `total` durations), each at most `max`.
    fn quantiles(&mut self, total: u64, max: i64) -> [Option<i64>; 4] {
        let mut out = [None; 4];
        if total == 0 {
            return out;
        }
        self.normalize();
        let ranks = QUANTILES.map(|q| ((q * total as f64).ceil() as u64).max(1));
        let (mut seen, mut i) = (0u64, 0);
        for &(v, c) in &self.pairs {
            seen += c;
            while i < ranks.len() && seen >= ranks[i] {
                out[i] = Some(i64::try_from(v).unwrap_or(i64::MAX).min(max));
                i += 1;
            }
        }
        out
    }
}

/// A stored sketch that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed stored sketch: {0}")]
pub struct SketchError(&'static str);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(r: &mut &[u8]) -> Result<u64, SketchError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = r.split_first().ok_or(SketchError("truncated"))?;
        *r = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(SketchError("varint too long"))
}

/// A stored rollup bucket as a query reads it.
#[derive(Debug, Clone)]
pub struct RollupRow {
    /// The bucket's start.
    pub bucket: i64,
    /// The bucket's stored value of the read's [`Part`].
    pub body: Vec<u8>,
}

/// A record as a record-reading stats query reads it.
#[derive(Debug, Clone)]
pub struct StatsRecord {
    /// `created_at`, ms.
    pub created_at: i64,
    /// The status code.
    pub status_code: u16,
    /// The duration.
    pub duration_ms: Option<i64>,
    /// The grouping column's value (the rollup groupings are derived by
    /// [`StatsRecord::group`] from the other fields).
    pub group: Option<String>,
    /// The route pattern.
    pub route_pattern: Option<String>,
    /// The method.
    pub method: String,
}

/// The figures of one bucket (or a series' total).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Figures {
    /// Records.
    pub count: u64,
    /// Records with a 4xx status.
    pub errors_4xx: u64,
    /// Records with a 5xx status.
    pub errors_5xx: u64,
    /// Nearest-rank quantiles of the durations: p50, p90, p95, p99 (`None` when no record
    /// had a duration).
    pub quantiles: [Option<i64>; 4],
    /// The largest duration.
    pub max_ms: Option<i64>,
}

/// One series of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The group.
    pub group: GroupValue,
    /// Over the whole range.
    pub total: Figures,
    /// Per bucket, oldest first: `(start, figures)`.
    pub buckets: Vec<(i64, Figures)>,
}

/// A stats answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsAnswer {
    /// The series, by count (descending), then group.
    pub series: Vec<Series>,
    /// Whether the answer came from the rollups (else from the records).
    pub from_rollups: bool,
}

/// Builds an answer from rollup buckets or records.
#[derive(Debug)]
pub struct Assembler {
    query: StatsQuery,
    groups: HashMap<GroupValue, (Cell, HashMap<i64, Cell>)>,
}

/// The group of a row with these fields under `group_by`.
fn group_of(
    group_by: Option<GroupBy>,
    route_pattern: Option<&str>,
    method: &str,
    status: u16,
    other: Option<&str>,
) -> GroupValue {
    let text = |s: Option<&str>| match s {
        Some(s) if !s.is_empty() => GroupValue::Text(s.to_owned()),
        _ => GroupValue::Null,
    };
    match group_by {
        None => GroupValue::Null,
        Some(GroupBy::RoutePattern) => text(route_pattern),
        Some(GroupBy::Method) => GroupValue::Text(method.to_owned()),
        Some(GroupBy::StatusCode) => GroupValue::Code(status),
        Some(GroupBy::StatusClass) => GroupValue::Text(format!("{}xx", status / 100)),
        Some(_) => text(other),
    }
}

impl Assembler {
    /// An assembler for `query`.
    pub fn new(query: &StatsQuery) -> Self {
        Self {
            query: query.clone(),
            groups: HashMap::new(),
        }
    }

    fn slot(&mut self, group: GroupValue, at: i64) -> (&mut Cell, &mut Cell) {
        let interval = self.query.interval;
        let (total, buckets) = self
            .groups
            .entry(group)
            .or_insert_with(|| (Cell::new_empty(), HashMap::new()));
        (
            total,
            buckets
                .entry(interval.floor(at))
                .or_insert_with(Cell::new_empty),
        )
    }

    /// Adds one decoded cell's counts to its group's total and bucket (its durations went
    /// to `sketch`, which joins the bucket's).
    fn add_cell(&mut self, group: GroupValue, at: i64, cell: &Cell, sketch: &mut Sketch) {
        let (total, bucket) = self.slot(group, at);
        // The total's durations are the buckets' merged at the end, once each bucket's are
        // folded, so each stored pair is copied once here.
        total.add_counts(cell);
        bucket.add_counts(cell);
        bucket.sketch.merge(sketch);
        bucket.sketch.compact();
        sketch.clear();
    }

    /// Adds a stored rollup bucket, reading only the section the query needs: the total,
    /// one per-dimension sum, or (with a filter) every cell, filtered here.
    pub fn add_row(&mut self, row: &RollupRow) -> Result<(), SketchError> {
        let which = self.query.rollup_part();
        let mut r = body(&row.body)?;
        let mut sketch = Sketch::default();
        if which == Part::Total {
            let cell = Cell::decode_into(&mut r, &mut sketch)?;
            self.add_cell(GroupValue::Null, row.bucket, &cell, &mut sketch);
            return Ok(());
        }
        for _ in 0..varint(&mut r)? {
            let group = match which {
                Part::Routes => group_of(self.query.group_by, Some(text(&mut r)?), "", 0, None),
                Part::Methods => GroupValue::Text(text(&mut r)?.to_owned()),
                Part::Statuses => {
                    let status =
                        u16::try_from(varint(&mut r)?).map_err(|_| SketchError("status"))?;
                    group_of(self.query.group_by, None, "", status, None)
                }
                _ => {
                    let route = text(&mut r)?;
                    let method = text(&mut r)?;
                    let status =
                        u16::try_from(varint(&mut r)?).map_err(|_| SketchError("status"))?;
                    let f = &self.query.filter;
                    let keep = f.method.as_deref().is_none_or(|m| m == method)
                        && f.route_pattern.as_deref().is_none_or(|p| p == route)
                        && f.status_min.is_none_or(|s| status >= s)
                        && f.status_max.is_none_or(|s| status <= s);
                    if !keep {
                        // Skip the cell: its counts, then its sketch.
                        Cell::decode_into(&mut r, &mut sketch)?;
                        sketch.clear();
                        continue;
                    }
                    group_of(self.query.group_by, Some(route), method, status, None)
                }
            };
            let cell = Cell::decode_into(&mut r, &mut sketch)?;
            self.add_cell(group, row.bucket, &cell, &mut sketch);
        }
        Ok(())
    }

    /// Adds a record (already filtered by the store).
    pub fn add_record(&mut self, r: &StatsRecord) {
        let group = group_of(
            self.query.group_by,
            r.route_pattern.as_deref(),
            &r.method,
            r.status_code,
            r.group.as_deref(),
        );
        let mut cell = Cell::new_empty();
        cell.add(r.status_code, r.duration_ms);
        let mut sketch = std::mem::take(&mut cell.sketch);
        self.add_cell(group, r.created_at, &cell, &mut sketch);
    }

    /// The answer: the `limit` largest series, every bucket of the range in each.
    pub fn finish(self, from_rollups: bool) -> StatsAnswer {
        let q = self.query;
        let mut groups: Vec<_> = self.groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.0.count.cmp(&a.1.0.count).then(a.0.cmp(&b.0)));
        groups.truncate(q.limit as usize);
        if groups.is_empty() && q.group_by.is_none() {
            groups.push((GroupValue::Null, (Cell::new_empty(), HashMap::new())));
        }
        let series = groups
            .into_iter()
            .map(|(group, (total, mut buckets))| {
                // The total's durations: the buckets' folded pairs, recorded into one HDR
                // histogram (dense, so adding is O(1) whatever the number of buckets).
                let mut durations = empty_histogram();
                let buckets = (0..q.buckets())
                    .map(|i| {
                        let start = q.from + i * q.interval.millis();
                        let figures = match buckets.get_mut(&start) {
                            Some(acc) => {
                                let figures = acc.figures();
                                for &(v, c) in &acc.sketch.pairs {
                                    durations.saturating_record_n(v, c);
                                }
                                figures
                            }
                            None => Figures::default(),
                        };
                        (start, figures)
                    })
                    .collect();
                let max = total.max_ms;
                let mut quantiles = [None; 4];
                if total.timed > 0 {
                    for (q, v) in quantiles
                        .iter_mut()
                        .zip(durations.value_at_quantiles(QUANTILES))
                    {
                        *q = Some(i64::try_from(v).unwrap_or(i64::MAX).min(max));
                    }
                }
                Series {
                    group,
                    total: Figures {
                        count: total.count,
                        errors_4xx: total.errors_4xx,
                        errors_5xx: total.errors_5xx,
                        quantiles,
                        max_ms: (max >= 0).then_some(max),
                    },
                    buckets,
                }
            })
            .collect();
        StatsAnswer {
            series,
            from_rollups,
        }
    }
}

/// What a rollup read selects: one level's buckets of a range (the filters are applied to
/// the buckets' cells by the [`Assembler`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRead {
    /// The level to read.
    pub level: Level,
    /// First bucket start, inclusive.
    pub from: i64,
    /// Last bucket start, exclusive.
    pub to: i64,
    /// The stored value to read.
    pub part: Part,
    /// Rows to read at most (one more tells the bound was passed).
    pub max_rows: u32,
}

impl RollupRead {
    /// The rollup read of `query`.
    pub fn of(query: &StatsQuery) -> Self {
        Self {
            level: query.interval.level(),
            from: query.from,
            to: query.to,
            part: query.rollup_part(),
            max_rows: MAX_ROWS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(mut v: Vec<i64>, q: f64) -> i64 {
        v.sort_unstable();
        let rank = ((q * v.len() as f64).ceil() as usize).max(1);
        v[rank - 1]
    }

    #[test]
    fn quantiles_are_within_one_percent_of_nearest_rank_on_skewed_data() {
        let mut rng = fastrand_like(7);
        let mut values = Vec::new();
        for _ in 0..20_000 {
            // Log-normal-ish with a heavy tail.
            let u = rng();
            let v = if u < 0.9 {
                5 + (u * 300.0) as i64
            } else {
                (u * 1e6) as i64
            };
            values.push(v);
        }
        // Split over many cells, encoded and merged as a query would.
        let mut merged = Sketch::default();
        for chunk in values.chunks(333) {
            let mut s = Sketch::default();
            for v in chunk {
                s.record(*v);
            }
            merged.merge_encoded(&s.encode()).expect("decodes");
        }
        let max = *values.iter().max().expect("values");
        let got = merged.quantiles(values.len() as u64, max);
        for (i, q) in QUANTILES.iter().enumerate() {
            let want = exact(values.clone(), *q);
            let g = got[i].expect("a value");
            let err = (g - want).abs() as f64 / want as f64;
            assert!(err <= 0.01, "q{q}: {g} vs exact {want}");
        }
    }

    #[test]
    fn small_values_are_exact_and_encoding_round_trips() {
        let mut s = Sketch::default();
        for v in [0, 1, 1, 7, 255, 3] {
            s.record(v);
        }
        let bytes = s.encode();
        let mut back = Sketch::default();
        back.merge_encoded(&bytes).expect("decodes");
        back.normalize();
        assert_eq!(back.pairs, vec![(0, 1), (1, 2), (3, 1), (7, 1), (255, 1)]);
        assert!(
            Sketch::default()
                .merge_encoded(&bytes[..bytes.len() - 1])
                .is_err()
        );
    }

    #[test]
    fn a_bucket_round_trips_and_its_sections_hold_its_sums() {
        let mut b = Bucket::default();
        b.add(Some("/a"), "GET", 200, Some(5));
        b.add(Some("/a"), "GET", 500, Some(300));
        b.add(None, "POST", 404, None);
        b.add(Some("/b"), "GET", 200, Some(7));
        let Encoded {
            values: [total, .., cells],
        } = b.encode();
        assert_eq!(Bucket::decode(&cells).expect("decodes"), b);
        let mut total = body(&total).expect("total");
        let mut sketch = Sketch::default();
        let cell = Cell::decode_into(&mut total, &mut sketch).expect("cell");
        assert_eq!(
            (
                cell.count,
                cell.errors_4xx,
                cell.errors_5xx,
                cell.timed,
                cell.max_ms
            ),
            (4, 1, 1, 3, 300)
        );
        sketch.normalize();
        assert_eq!(sketch.pairs.len(), 3);
        assert!(Bucket::decode(&cells[..cells.len() - 2]).is_err());
    }

    #[test]
    fn a_bucket_past_its_cell_bound_counts_new_routes_without_one() {
        let mut b = Bucket::default();
        for i in 0..MAX_CELLS + 5 {
            b.add(Some(&format!("/r{i}")), "GET", 200, Some(1));
        }
        assert_eq!(b.cells.len(), MAX_CELLS + 1);
        let spill = &b.cells[&(String::new(), "GET".to_owned(), 200)];
        assert_eq!(spill.count, 5);
        // A route already in the bucket keeps its own cell.
        b.add(Some("/r0"), "GET", 200, Some(1));
        assert_eq!(b.cells[&("/r0".to_owned(), "GET".to_owned(), 200)].count, 2);
    }

    #[test]
    fn buckets_align_to_utc_interval_edges() {
        assert_eq!(Interval::H1.floor(3_600_000 + 5), 3_600_000);
        assert_eq!(Interval::H1.ceil(3_600_000 + 5), 7_200_000);
        assert_eq!(Interval::H1.ceil(3_600_000), 3_600_000);
        assert_eq!(Interval::D1.floor(-1), -86_400_000);
        assert_eq!(Level::Minute.bucket_of(59_999), 0);
    }

    fn fastrand_like(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }
}
