//! The standard `process_*` series, read from `/proc/self` when scraped (Linux; elsewhere
//! the collector writes nothing).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/*/stat` (USER_HZ: 100 on every Linux architecture's
/// user ABI, whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// A snapshot of the process, from `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    /// `None`: unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// `(utime + stime) / USER_HZ` and `starttime / USER_HZ` (since boot) from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3; utime 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu = (field(14)? + field(15)?) as f64 / USER_HZ;
    let start = field(22)? as f64 / USER_HZ;
    Some((cpu, start))
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// The soft limit of open files from `/proc/<pid>/limits`; `Some(None)` when unlimited.
pub fn parse_max_fds(limits: &str) -> Option<Option<u64>> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(None);
    }
    soft.parse().ok().map(Some)
}

/// `btime` (boot time, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessStats {
    /// This process now; `None` where `/proc` is missing or unreadable.
    pub fn read() -> Option<ProcessStats> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let (cpu_seconds, started_after_boot) = parse_stat(&read("/proc/self/stat")?)?;
        let boot = parse_boot_time(&read("/proc/stat")?)?;
        Some(ProcessStats {
            cpu_seconds,
            resident_bytes: parse_rss(&read("/proc/self/status")?)?,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds: parse_max_fds(&read("/proc/self/limits")?)?,
            start_time_seconds: boot as f64 + started_after_boot,
        })
    }
}

/// Registers as the `process_*` series of the Prometheus client conventions.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        ConstCounter::new(s.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        let whole = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            whole(s.resident_bytes),
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            whole(s.open_fds),
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            ConstGauge::new(s.max_fds.map_or(f64::INFINITY, |n| n as f64)),
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            ConstGauge::new(s.start_time_seconds),
        )?;
        Ok(())
    }
}

/// One gauge family of a single unlabelled value.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeMetric,
) -> std::fmt::Result {
    value.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        // A command name with a space and a parenthesis, as a process may choose.
        let stat = "4242 (pier (x) y) S 1 4242 4242 0 -1 4194560 1507 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 1000000 5000 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 1234.56)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tpier\nVmPeak:\t  99 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(parse_rss(status), Some(2048 * 1024));
        assert_eq!(parse_rss("Name:\tpier\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63422                63422                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(Some(1024)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), Some(None));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        // Five files opened show in the count. The other tests of this binary open and
        // close files on other threads meanwhile, so one of a few tries must see them.
        let tries: Vec<(u64, u64)> = (0..10)
            .map(|_| {
                let before = ProcessStats::read().expect("/proc/self").open_fds;
                let files: Vec<std::fs::File> = (0..5)
                    .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
                    .collect();
                let after = ProcessStats::read().unwrap().open_fds;
                drop(files);
                (before, after)
            })
            .collect();
        assert!(
            tries.iter().any(|(before, after)| *after >= before + 5),
            "open fds before and after opening 5 files: {tries:?}"
        );
        let before = ProcessStats::read().expect("/proc/self");
        // Burn a little CPU so the counter can move.
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = ProcessStats::read().unwrap();
        assert!(
            after.cpu_seconds >= before.cpu_seconds,
            "{before:?} {after:?}"
        );
        assert!(after.resident_bytes > 1024 * 1024, "{after:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started within the last hour (a test binary), not in the future.
        assert!(
            after.start_time_seconds <= now + 1.0 && after.start_time_seconds > now - 3600.0,
            "{after:?} now {now}"
        );
        assert!(
            after.max_fds.is_none_or(|m| m >= after.open_fds),
            "{after:?}"
        );

        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for series in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ",
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ",
            "# TYPE process_open_fds gauge\nprocess_open_fds ",
            "# TYPE process_max_fds gauge\nprocess_max_fds ",
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ",
        ] {
            assert!(text.contains(series), "{series:?} in\n{text}");
        }
    }
}
