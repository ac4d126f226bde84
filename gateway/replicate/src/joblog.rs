//! The durable log of replication jobs (`pier replication jobs`, `pier replication
//! retry ID`) and the runner that retries a job until it succeeds or gives up.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pier_oci::{Reference, RepoName};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::copy::now_ms;
use crate::{CopyFailed, JobReport, ReplicateError, RetryPolicy};

/// A job's number, unique in its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What to copy, as the rule that made the job said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The replication rule's name.
    pub rule: String,
    /// The source registry (a URL, or `local`).
    pub source: String,
    pub destination: String,
    pub src_repo: String,
    pub dst_repo: String,
    /// A tag or a digest.
    pub reference: String,
    /// Delete `reference` at the destination instead of copying (deletion propagation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
    /// Identifies the request that made the job (an event, a plugin, an action): a second
    /// request with the same key (the event routed again after a crash) makes no new job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl JobSpec {
    /// The validated repository names and reference.
    pub fn parse(&self) -> Result<(RepoName, RepoName, Reference), ReplicateError> {
        let bad =
            |what: &str, e: &dyn fmt::Display| ReplicateError::InvalidJob(format!("{what}: {e}"));
        Ok((
            self.src_repo
                .parse()
                .map_err(|e| bad("source repository", &e))?,
            self.dst_repo
                .parse()
                .map_err(|e| bad("destination repository", &e))?,
            self.reference.parse().map_err(|e| bad("reference", &e))?,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        })
    }
}

/// One job as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    #[serde(flatten)]
    pub spec: JobSpec,
    pub state: JobState,
    /// Attempts made so far (over retries by hand too).
    pub attempts: u32,
    /// Unix milliseconds of the last change.
    pub updated_ms: u64,
    /// The last attempt's report.
    pub report: Option<JobReport>,
    /// What happened to the job, oldest first: the last [`JobRecord::MAX_LOG`] lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<JobLogLine>,
}

/// One timestamped line of a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogLine {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub message: String,
}

impl JobRecord {
    /// Lines a job keeps; older ones are dropped.
    pub const MAX_LOG: usize = 200;

    /// Adds a line to the job's history (not stored until the record is).
    pub fn note(&mut self, message: impl Into<String>) {
        self.log.push(JobLogLine {
            time_ms: now_ms(),
            message: message.into(),
        });
        if self.log.len() > Self::MAX_LOG {
            let extra = self.log.len() - Self::MAX_LOG;
            self.log.drain(..extra);
        }
    }
}

/// Where job records live.
#[async_trait]
pub trait JobLog: Send + Sync {
    /// A new queued job.
    async fn create(&self, spec: JobSpec) -> Result<JobRecord, ReplicateError>;

    /// Like [`JobLog::create`], unless a job with the same `spec.key` exists: then that
    /// one, and `false`.
    async fn create_once(&self, spec: JobSpec) -> Result<(JobRecord, bool), ReplicateError> {
        self.create(spec).await.map(|r| (r, true))
    }
    /// Store a changed record (same id).
    async fn update(&self, record: &JobRecord) -> Result<(), ReplicateError>;
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, ReplicateError>;
    /// The newest `limit` jobs, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<JobRecord>, ReplicateError>;

    /// Queue a finished job again (`pier replication retry ID`): a failed or succeeded
    /// job goes back to `queued`; a queued or running one is refused.
    async fn requeue(&self, id: JobId) -> Result<JobRecord, ReplicateError> {
        let mut record = self
            .get(id)
            .await?
            .ok_or(ReplicateError::JobNotFound(id.0))?;
        if matches!(record.state, JobState::Queued | JobState::Running) {
            return Err(ReplicateError::JobNotRetryable {
                id: id.0,
                state: record.state.to_string(),
            });
        }
        record.state = JobState::Queued;
        record.updated_ms = now_ms();
        record.note("queued again by hand");
        self.update(&record).await?;
        Ok(record)
    }
}

/// Job records as JSON lines in one file: each change appends the whole record; the
/// last line of an id wins. The file is rewritten (temp file, fsync, rename) when it
/// holds more than twice as many lines as jobs. All jobs stay in memory.
pub struct JsonlJobLog {
    inner: Arc<Mutex<LogState>>,
}

struct LogState {
    path: PathBuf,
    file: File,
    jobs: BTreeMap<JobId, JobRecord>,
    lines: usize,
}

impl JsonlJobLog {
    /// Open (or create) the log at `path`. Unreadable lines (a torn last write) are
    /// skipped.
    pub fn open(path: impl AsRef<Path>) -> Result<JsonlJobLog, ReplicateError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ReplicateError::JobLog {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut jobs = BTreeMap::new();
        let mut lines = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(&path).map_err(io)?);
            for line in reader.lines() {
                let line = line.map_err(io)?;
                if line.trim().is_empty() {
                    continue;
                }
                lines += 1;
                match serde_json::from_str::<JobRecord>(&line) {
                    Ok(record) => {
                        jobs.insert(record.id, record);
                    }
                    Err(error) => {
                        warn!(path = %path.display(), %error, "skipping an unreadable job log line")
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(JsonlJobLog {
            inner: Arc::new(Mutex::new(LogState {
                path,
                file,
                jobs,
                lines,
            })),
        })
    }

    async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LogState) -> Result<T, ReplicateError> + Send + 'static,
    ) -> Result<T, ReplicateError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = inner.lock().expect("job log lock");
            f(&mut state)
        })
        .await
        .map_err(|e| ReplicateError::JobLog {
            path: String::new(),
            source: std::io::Error::other(e),
        })?
    }
}

impl LogState {
    fn io(&self) -> impl Fn(std::io::Error) -> ReplicateError + '_ {
        |source| ReplicateError::JobLog {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn append(&mut self, record: &JobRecord) -> Result<(), ReplicateError> {
        let mut line = serde_json::to_vec(record).map_err(|e| ReplicateError::JobLog {
            path: self.path.display().to_string(),
            source: e.into(),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(self.io())?;
        self.file.sync_data().map_err(self.io())?;
        self.jobs.insert(record.id, record.clone());
        self.lines += 1;
        if self.lines > 2 * self.jobs.len() + 64 {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), ReplicateError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp).map_err(self.io())?;
        for record in self.jobs.values() {
            let mut line = serde_json::to_vec(record).map_err(|e| ReplicateError::JobLog {
                path: tmp.display().to_string(),
                source: e.into(),
            })?;
            line.push(b'\n');
            out.write_all(&line).map_err(self.io())?;
        }
        out.sync_all().map_err(self.io())?;
        std::fs::rename(&tmp, &self.path).map_err(self.io())?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(self.io())?;
        self.lines = self.jobs.len();
        Ok(())
    }
}

#[async_trait]
impl JobLog for JsonlJobLog {
    async fn create(&self, spec: JobSpec) -> Result<JobRecord, ReplicateError> {
        self.with_state(move |state| {
            let id = JobId(state.jobs.keys().next_back().map_or(1, |id| id.0 + 1));
            let record = JobRecord {
                id,
                spec,
                state: JobState::Queued,
                attempts: 0,
                updated_ms: now_ms(),
                report: None,
                log: Vec::new(),
            };
            state.append(&record)?;
            Ok(record)
        })
        .await
    }

    async fn create_once(&self, spec: JobSpec) -> Result<(JobRecord, bool), ReplicateError> {
        if let Some(key) = &spec.key
            && let Some(r) = self
                .inner
                .lock()
                .expect("job log lock")
                .jobs
                .values()
                .find(|r| r.spec.key.as_ref() == Some(key))
        {
            return Ok((r.clone(), false));
        }
        self.create(spec).await.map(|r| (r, true))
    }

    async fn update(&self, record: &JobRecord) -> Result<(), ReplicateError> {
        let record = record.clone();
        self.with_state(move |state| {
            if !state.jobs.contains_key(&record.id) {
                return Err(ReplicateError::JobNotFound(record.id.0));
            }
            state.append(&record)
        })
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, ReplicateError> {
        Ok(self
            .inner
            .lock()
            .expect("job log lock")
            .jobs
            .get(&id)
            .cloned())
    }

    async fn list(&self, limit: usize) -> Result<Vec<JobRecord>, ReplicateError> {
        Ok(self
            .inner
            .lock()
            .expect("job log lock")
            .jobs
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }
}

/// Runs jobs with job-level retries ("site B down → retry later"), recording every
/// state change in a [`JobLog`].
pub struct JobRunner {
    log: Arc<dyn JobLog>,
    policy: RetryPolicy,
}

impl JobRunner {
    pub fn new(log: Arc<dyn JobLog>, policy: RetryPolicy) -> JobRunner {
        JobRunner { log, policy }
    }

    pub fn log(&self) -> &Arc<dyn JobLog> {
        &self.log
    }

    /// Run `record` with `attempt` (a closure doing one copy, e.g. [`crate::copy_image`])
    /// until it succeeds, fails permanently, or the policy's attempts run out. The
    /// record ends `succeeded` or `failed` with the last attempt's report.
    pub async fn run<F, Fut>(
        &self,
        mut record: JobRecord,
        mut attempt: F,
    ) -> Result<JobRecord, ReplicateError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<JobReport, CopyFailed>> + Send,
    {
        let mut tries = 0u32;
        loop {
            record.state = JobState::Running;
            record.attempts += 1;
            tries += 1;
            record.updated_ms = now_ms();
            self.log.update(&record).await?;
            match attempt().await {
                Ok(report) => {
                    record.state = JobState::Succeeded;
                    record.report = Some(report);
                    record.updated_ms = now_ms();
                    self.log.update(&record).await?;
                    return Ok(record);
                }
                Err(failed) => {
                    let retry = failed.error.is_retryable() && self.policy.allows(tries);
                    record.report = Some(failed.report);
                    record.updated_ms = now_ms();
                    if !retry {
                        record.state = JobState::Failed;
                        self.log.update(&record).await?;
                        return Ok(record);
                    }
                    record.state = JobState::Queued;
                    self.log.update(&record).await?;
                    let wait = self.policy.backoff(tries);
                    warn!(job = %record.id, attempt = record.attempts, wait_ms = wait.as_millis() as u64,
                        error = %failed.error, "replication job failed; will retry");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            rule: "r".into(),
            source: "local".into(),
            destination: "http://b".into(),
            src_repo: "a/b".into(),
            dst_repo: "c/d".into(),
            reference: "v1".into(),
            delete: false,
            key: None,
        }
    }

    #[tokio::test]
    async fn a_keyed_request_makes_one_job_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.jsonl");
        let log = JsonlJobLog::open(&path).unwrap();
        let keyed = JobSpec {
            key: Some("7:replicate:0:v1".into()),
            ..spec()
        };
        let (a, new_a) = log.create_once(keyed.clone()).await.unwrap();
        let (b, new_b) = log.create_once(keyed.clone()).await.unwrap();
        assert!(new_a && !new_b);
        assert_eq!(a.id, b.id);
        let (_, unkeyed) = log.create_once(spec()).await.unwrap();
        let (_, unkeyed_again) = log.create_once(spec()).await.unwrap();
        assert!(
            unkeyed && unkeyed_again,
            "jobs without a key are never merged"
        );
        drop(log);
        let log = JsonlJobLog::open(&path).unwrap();
        let (c, new_c) = log.create_once(keyed).await.unwrap();
        assert!(!new_c, "the key survives a restart");
        assert_eq!(c.id, a.id);
    }

    #[tokio::test]
    async fn records_survive_reopening_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs").join("jobs.jsonl");
        let log = JsonlJobLog::open(&path).unwrap();
        let mut first = log.create(spec()).await.unwrap();
        let second = log.create(spec()).await.unwrap();
        assert_eq!((first.id, second.id), (JobId(1), JobId(2)));
        for _ in 0..200 {
            first.attempts += 1;
            log.update(&first).await.unwrap();
        }
        first.state = JobState::Failed;
        log.update(&first).await.unwrap();
        drop(log);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 100, "compacted: {lines} lines");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let log = JsonlJobLog::open(&path).unwrap();
        let got = log.get(JobId(1)).await.unwrap().unwrap();
        assert_eq!(got.attempts, 200);
        assert_eq!(got.state, JobState::Failed);
        let list = log.list(10).await.unwrap();
        assert_eq!(list.iter().map(|r| r.id.0).collect::<Vec<_>>(), [2, 1]);
        assert!(
            log.requeue(JobId(2)).await.is_err(),
            "queued jobs are not retried"
        );
        let again = log.requeue(JobId(1)).await.unwrap();
        assert_eq!(again.state, JobState::Queued);
        assert!(matches!(
            log.requeue(JobId(9)).await,
            Err(ReplicateError::JobNotFound(9))
        ));
        assert_eq!(log.create(spec()).await.unwrap().id, JobId(3));
    }

    #[tokio::test]
    async fn a_job_keeps_the_last_lines_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let log = JsonlJobLog::open(&path).unwrap();
        let mut r = log.create(spec()).await.unwrap();
        for i in 0..(JobRecord::MAX_LOG + 5) {
            r.note(format!("line {i}"));
        }
        log.update(&r).await.unwrap();
        drop(log);
        let got = JsonlJobLog::open(&path)
            .unwrap()
            .get(r.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.log.len(), JobRecord::MAX_LOG);
        assert_eq!(got.log[0].message, "line 5");
        assert!(got.log[0].time_ms > 0);
    }

    #[tokio::test]
    async fn the_runner_retries_retryable_failures_only() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn JobLog> = Arc::new(JsonlJobLog::open(dir.path().join("j.jsonl")).unwrap());
        let runner = JobRunner::new(
            log.clone(),
            RetryPolicy {
                max_attempts: 5,
                base: std::time::Duration::from_millis(1),
                cap: std::time::Duration::from_millis(2),
            },
        );
        let fail = |retryable: bool| CopyFailed {
            report: JobReport::default(),
            error: ReplicateError::other(crate::Side::Destination, "x", retryable, "boom"),
        };
        let record = log.create(spec()).await.unwrap();
        let mut n = 0;
        let done = runner
            .run(record, || {
                n += 1;
                let r = if n < 3 {
                    Err(fail(true))
                } else {
                    Ok(JobReport::default())
                };
                async move { r }
            })
            .await
            .unwrap();
        assert_eq!((done.state, done.attempts), (JobState::Succeeded, 3));
        let record = log.create(spec()).await.unwrap();
        let done = runner
            .run(record, || async { Err(fail(false)) })
            .await
            .unwrap();
        assert_eq!((done.state, done.attempts), (JobState::Failed, 1));
        assert_eq!(
            log.get(done.id).await.unwrap().unwrap().state,
            JobState::Failed
        );
    }
}
