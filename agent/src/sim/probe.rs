//! What `tend-sim` reads of the machine: etcd's own counters (its `/metrics` on a client
//! URL, Prometheus text), and the CPU time and resident memory of processes (`/proc`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::SimError;

/// The counters `tend-sim` reads, summed over their label sets.
pub const COUNTERS: [&str; 7] = [
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_server_proposals_committed_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "grpc_server_handled_total",
    "etcd_debugging_lease_renewed_total",
];

/// The most of a `/metrics` page read.
const MAX_PAGE: usize = 8 << 20;

/// How long a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The counters of [`COUNTERS`] on the member at client URL `endpoint` (`http://HOST:PORT`).
pub async fn counters(endpoint: &str) -> Result<BTreeMap<String, f64>, SimError> {
    let page = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(endpoint))
        .await
        .map_err(|_| SimError::Scrape { endpoint: endpoint.to_string(), why: "no answer within 5 s".into() })??;
    Ok(parse(&page))
}

/// GET `endpoint/metrics`.
async fn scrape(endpoint: &str) -> Result<String, SimError> {
    let fail = |why: String| SimError::Scrape { endpoint: endpoint.to_string(), why };
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| fail("only http:// endpoints are scraped".into()))?
        .trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| fail(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| fail(e.to_string()))?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
    let body = Limited::new(response.into_body(), MAX_PAGE).collect().await.map_err(|e| fail(e.to_string()))?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// The counters of [`COUNTERS`] in a Prometheus text page, each summed over its labels.
fn parse(page: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if COUNTERS.contains(&name)
            && let Ok(v) = value.parse::<f64>()
        {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// CPU time (user + system) and resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss: u64,
}

/// The usage of process `pid` (`/proc/PID/stat`); `None` when it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // sysconf(_SC_CLK_TCK) on Linux
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    Some(Usage { cpu_s: (utime + stime) / ticks, rss: rss_pages * 4096 })
}

/// The processes named `etcd` whose command line holds one of `endpoints` (their client
/// URLs), by endpoint.
pub fn etcd_pids(endpoints: &[String]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("etcd")) {
            continue;
        }
        for e in endpoints {
            if args.iter().any(|a| a.split(',').any(|u| u == e)) {
                out.insert(e.clone(), pid);
            }
        }
    }
    out
}

/// Restarts process `pid` as it was started: SIGKILL (an etcd leader killed so does not hand
/// its leadership over: the others elect one), waits for it to go, `down` more, then runs
/// its command line again in its directory (detached: it outlives this process).
pub async fn restart(pid: u32, down: Duration) -> Result<(), SimError> {
    let fail = |why: String| SimError::Restart { pid, why };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| fail(e.to_string()))?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| fail(e.to_string()))?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let process = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| fail("not a process id".into()))?;
    rustix::process::kill_process(process, rustix::process::Signal::KILL).map_err(|e| fail(e.to_string()))?;
    // Gone, or a zombie its parent has not reaped yet.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| st.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    while running() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(down).await;
    let (program, rest) = args.split_first().ok_or_else(|| fail("an empty command line".into()))?;
    std::process::Command::new(program)
        .args(rest)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_their_labels_and_others_left_out() {
        let page = "# HELP x\netcd_mvcc_put_total 12\ngrpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 5\ngrpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"} 2\netcd_other 9\n";
        let c = parse(page);
        assert_eq!(c.get("etcd_mvcc_put_total"), Some(&12.0));
        assert_eq!(c.get("grpc_server_handled_total"), Some(&7.0));
        assert_eq!(c.get("etcd_other"), None);
    }

    #[test]
    fn this_process_has_a_usage() {
        let u = usage(std::process::id()).expect("our own stat");
        assert!(u.rss > 0);
    }
}
