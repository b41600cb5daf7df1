//! `apitrail export`: an org's request logs or audit entries to a file, oldest first, either
//! directly from the store (the same [`Export`] walk the HTTP routes stream) or from a running
//! server's export route (`--url`, `--key`). Progress goes to stderr; `--resume` keeps the
//! complete lines/rows of a partial file and continues after the last one.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use apitrail_api::filters;
use apitrail_api::native::export::{Export, Format, StartError};
use apitrail_api::params::Params;
use apitrail_model::OrgId;
use uuid::Uuid;

use crate::config::{ExportArgs, ExportFormat, ExportKind, StoreArgs};

/// Runs `apitrail export`.
pub async fn run(store_args: StoreArgs, args: ExportArgs) -> Result<(), String> {
    let format = match args.format {
        ExportFormat::Ndjson => Format::Ndjson,
        ExportFormat::Csv => Format::Csv,
    };
    let filters = args.filters()?;
    let path = args.output.as_path();
    let kept = if args.resume {
        keep_complete(path, format)?
    } else {
        Kept::default()
    };
    let mut file = open_output(path, args.resume)?;
    let mut progress = Progress::new(kept.rows);
    let result = match &args.url {
        Some(url) => {
            let key = args
                .key
                .as_deref()
                .ok_or("--url needs --key (an org API key with the read scope)")?;
            remote(
                url,
                key,
                &args,
                format,
                &filters,
                &kept,
                &mut file,
                &mut progress,
            )
            .await
        }
        None => {
            local(
                store_args,
                &args,
                format,
                &filters,
                &kept,
                &mut file,
                &mut progress,
            )
            .await
        }
    };
    // What was written stays (a later --resume continues it), complete or not.
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    progress.finish(result.is_ok());
    result.map_err(|e| {
        format!(
            "{e}; {} rows are in {}: run again with --resume to continue",
            progress.rows,
            path.display()
        )
    })
}

/// What `--resume` keeps of an existing file.
#[derive(Debug, Default)]
struct Kept {
    /// Records kept.
    rows: u64,
    /// The last kept record's id.
    last: Option<Uuid>,
    /// Whether the file starts with its CSV header row.
    header: bool,
}

/// Cuts `path` back to its complete lines/rows (a cut-off last one, or an NDJSON error line,
/// goes) and says where to continue.
fn keep_complete(path: &Path, format: Format) -> Result<Kept, String> {
    let shown = path.display();
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_end(&mut text)
            .map_err(|e| format!("cannot read {shown} to resume it: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kept::default()),
        Err(e) => return Err(format!("cannot read {shown} to resume it: {e}")),
    };
    let ends = record_ends(&text, format);
    let mut records: Vec<&[u8]> = Vec::with_capacity(ends.len());
    let mut start = 0;
    for end in &ends {
        records.push(&text[start..*end]);
        start = *end;
    }
    // An error line a failed export wrote last is not a record.
    while records.last().is_some_and(|r| r.starts_with(b"{\"error\"")) {
        records.pop();
    }
    let header = format == Format::Csv && !records.is_empty();
    let data = if header { &records[1..] } else { &records[..] };
    let last = match data.last() {
        None => None,
        Some(r) => Some(record_id(r, format).ok_or_else(|| {
            format!(
                "the last complete record of {shown} has no id: is it an export in this format?"
            )
        })?),
    };
    let keep: usize = records.iter().map(|r| r.len()).sum();
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep as u64))
        .map_err(|e| format!("cannot cut {shown} back to its complete records: {e}"))?;
    Ok(Kept {
        rows: data.len() as u64,
        last,
        header,
    })
}

/// The offsets just past each complete record (NDJSON lines; CSV rows, whose quoted cells may
/// hold line breaks).
fn record_ends(text: &[u8], format: Format) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut quoted = false;
    for (i, b) in text.iter().enumerate() {
        match b {
            b'"' if format == Format::Csv => quoted = !quoted,
            b'\n' if !quoted => ends.push(i + 1),
            _ => {}
        }
    }
    ends
}

/// The id of one record: the NDJSON line's `id`, or the CSV row's first cell.
fn record_id(record: &[u8], format: Format) -> Option<Uuid> {
    match format {
        Format::Ndjson => {
            #[derive(serde::Deserialize)]
            struct Line {
                id: String,
            }
            let line: Line = serde_json::from_slice(record).ok()?;
            Uuid::try_parse(&line.id).ok()
        }
        Format::Csv => {
            let end = record.iter().position(|b| *b == b',')?;
            Uuid::try_parse_ascii(&record[..end]).ok()
        }
    }
}

fn open_output(path: &Path, append: bool) -> Result<File, String> {
    let mut options = OpenOptions::new();
    options.create(true).write(true);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot open {} for writing: {e}", path.display()))?;
    if append {
        file.seek(SeekFrom::End(0))
            .map_err(|e| format!("cannot append to {}: {e}", path.display()))?;
    }
    Ok(file)
}

fn write_all(file: &mut File, bytes: &[u8]) -> Result<(), String> {
    file.write_all(bytes)
        .map_err(|e| format!("cannot write the export file: {e}"))
}

/// The export straight from the store.
async fn local(
    store_args: StoreArgs,
    args: &ExportArgs,
    format: Format,
    filters: &[(&'static str, String)],
    kept: &Kept,
    file: &mut File,
    progress: &mut Progress,
) -> Result<(), String> {
    let org = args
        .org
        .as_deref()
        .ok_or("--org is required to export from the store")?;
    let at = store_args.describe();
    let id = OrgId::parse(org).map_err(|e| format!("--org: {e}"))?;
    let store = store_args
        .open(apitrail_store_sqlite::SqliteOptions {
            readers: 1,
            ..apitrail_store_sqlite::SqliteOptions::default()
        })
        .await?;
    let result = async {
        let tenant = store
            .tenant(&id)
            .await
            .map_err(|e| format!("cannot look up org {org:?} ({at}): {e}"))?
            .ok_or_else(|| format!("no org has the id {org:?} in {at}"))?;
        // Same parsing as the HTTP route: the same names, limits and messages.
        let query = form_query(filters);
        let params = Params::parse(Some(&query));
        let bad = |e: apitrail_api::error::ApiError| format!("invalid filter: {}", e.message);
        let unknown = |e: StartError| match e {
            StartError::UnknownAfter => format!(
                "the last record of the file is not in org {org:?} ({at}): resume the file it came from"
            ),
            StartError::Store(e) => format!("cannot export ({at}): {e}"),
        };
        let total = if filters.is_empty() {
            match args.kind {
                ExportKind::Requests => store.count_request_logs(&tenant).await.ok(),
                ExportKind::Audit => store.audit_chain_head(&tenant).await.ok().map(|h| h.entries),
            }
        } else {
            None
        };
        progress.total = total;
        let mut export = match args.kind {
            ExportKind::Requests => {
                let filter = filters::logs(&params).map_err(bad)?;
                Export::requests(store.clone(), tenant, filter, kept.last, format).await
            }
            ExportKind::Audit => {
                let filter = filters::audit(&params).map_err(bad)?;
                Export::audit(store.clone(), tenant, filter, kept.last, format).await
            }
        }
        .map_err(unknown)?;
        if kept.header {
            export = export.without_header();
        }
        while let Some(chunk) = export
            .next_chunk()
            .await
            .map_err(|e| format!("the export failed ({at}): {e}"))?
        {
            write_all(file, &chunk.bytes)?;
            progress.add(chunk.rows as u64);
        }
        Ok(())
    }
    .await;
    let closed = store
        .shutdown()
        .await
        .map_err(|e| format!("cannot close the store cleanly ({at}): {e}"));
    result.and(closed)
}

fn form_query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// The export from a running server's route, streamed into the file.
#[allow(clippy::too_many_arguments)]
async fn remote(
    url: &str,
    key: &str,
    args: &ExportArgs,
    format: Format,
    filters: &[(&'static str, String)],
    kept: &Kept,
    file: &mut File,
    progress: &mut Progress,
) -> Result<(), String> {
    let route = match args.kind {
        ExportKind::Requests => "/v1/logs/export",
        ExportKind::Audit => "/v1/audit-log/export",
    };
    let mut pairs: Vec<(&str, String)> = vec![(
        "format",
        match format {
            Format::Ndjson => "ndjson".into(),
            Format::Csv => "csv".into(),
        },
    )];
    pairs.extend(filters.iter().map(|(k, v)| (*k, v.clone())));
    if let Some(id) = kept.last {
        pairs.push(("after", id.to_string()));
    }
    let target = format!(
        "{}{route}?{}",
        url.trim_end_matches('/'),
        form_query(&pairs)
    );
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut resp = client
        .get(&target)
        .header("x-api-key", key)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(format!("{url} answered {status}: {message}"));
    }
    // Each answer is a whole file; appending, its CSV header row is left out.
    let mut skip_header = format == Format::Csv && kept.header;
    let mut counter = RowCounter::new(format, !kept.header);
    let mut head: Vec<u8> = Vec::new();
    // The last line so far: a failed NDJSON export ends with an error line, not a record.
    let mut recent: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) if recent.starts_with(b"{\"error\"") => {
                progress.rows = progress.rows.saturating_sub(1);
                return Err(drop_error_line(file, &recent, url));
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("the export from {url} was cut off: {e}")),
        };
        let bytes = if skip_header {
            head.extend_from_slice(&chunk);
            let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
                continue;
            };
            skip_header = false;
            head.split_off(end + 2)
        } else {
            chunk.to_vec()
        };
        write_all(file, &bytes)?;
        progress.add(counter.feed(&bytes));
        if format == Format::Ndjson {
            recent.extend_from_slice(&bytes);
            let before_end = &recent[..recent.len().saturating_sub(1)];
            if let Some(p) = before_end.iter().rposition(|b| *b == b'\n') {
                recent.drain(..=p);
            }
        }
    }
}

/// Takes the error line a failed NDJSON export ended with back out of the file (so a
/// `--resume` continues after the last record) and says what the server reported.
fn drop_error_line(file: &mut File, line: &[u8], url: &str) -> String {
    let cut = file
        .metadata()
        .map(|m| m.len().saturating_sub(line.len() as u64))
        .and_then(|len| file.set_len(len));
    let message = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(line).trim().to_owned());
    match cut {
        Ok(()) => format!("the export from {url} failed before its end: {message}"),
        Err(e) => format!(
            "the export from {url} failed before its end: {message} (and its error line could not be taken out of the file: {e})"
        ),
    }
}

/// Counts records in a stream of bytes: line ends outside CSV quotes, less the header row.
struct RowCounter {
    csv: bool,
    quoted: bool,
    header_due: bool,
}

impl RowCounter {
    fn new(format: Format, header_due: bool) -> Self {
        Self {
            csv: format == Format::Csv,
            quoted: false,
            header_due: header_due && format == Format::Csv,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> u64 {
        let mut rows = 0;
        for b in bytes {
            match b {
                b'"' if self.csv => self.quoted = !self.quoted,
                b'\n' if !self.quoted => {
                    if std::mem::take(&mut self.header_due) {
                        continue;
                    }
                    rows += 1;
                }
                _ => {}
            }
        }
        rows
    }
}

/// Progress on stderr: a bar redrawn in place on a terminal, a plain line every few seconds
/// otherwise; rows, rate, and the ETA when the total is known.
struct Progress {
    rows: u64,
    resumed: u64,
    total: Option<u64>,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Progress {
    fn new(resumed: u64) -> Self {
        let now = Instant::now();
        Self {
            rows: resumed,
            resumed,
            total: None,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, rows: u64) {
        self.rows += rows;
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.show(false);
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.rows - self.resumed) as f64 / secs;
        let mut line = format!("{} rows, {:.0} rows/s", self.rows, rate);
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let done = self.rows.min(total);
            let left = total - done;
            let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
            if self.terminal {
                let width = 30;
                let filled = (done * width / total) as usize;
                line = format!(
                    "[{}{}] {line}, {:.0}%",
                    "#".repeat(filled),
                    "-".repeat(width as usize - filled),
                    done as f64 * 100.0 / total as f64
                );
            } else {
                line = format!("{line}, {done} of {total}");
            }
            line = format!("{line}, ETA {:.0}s", eta.ceil());
        }
        line
    }

    fn show(&self, last: bool) {
        let line = self.line();
        let mut err = std::io::stderr();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
    }

    fn finish(&mut self, ok: bool) {
        self.show(true);
        if ok {
            let secs = self.started.elapsed().as_secs_f64();
            let _ = writeln!(
                std::io::stderr(),
                "exported {} rows in {secs:.1}s",
                self.rows - self.resumed
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_end_outside_quotes() {
        let text = b"id,body\r\na,\"x\r\ny\"\r\nb,\"z\"\r\nc,\"cut";
        assert_eq!(record_ends(text, Format::Csv).len(), 3);
        let mut counter = RowCounter::new(Format::Csv, true);
        assert_eq!(counter.feed(&text[..12]) + counter.feed(&text[12..]), 2);
    }
}
