//! CPU time and memory of the server process, from `/proc` (Linux).

use std::collections::HashMap;
use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (ticks) of a `stat` file's text: the fields after the command name in
/// parentheses (which may itself hold spaces or parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3 of the man page, so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn thread_name(stat: &str) -> String {
    match (stat.find('('), stat.rfind(')')) {
        (Some(a), Some(b)) if b > a => stat[a + 1..b].to_owned(),
        _ => String::new(),
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Default)]
pub struct ProcReading {
    /// Ticks of CPU the whole process used since it started.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    /// Per thread: id → (name, ticks).
    pub threads: HashMap<u32, (String, u64)>,
}

pub fn read(pid: u32) -> Option<ProcReading> {
    let base = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut threads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("{base}/task")) {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(entry.path().join("stat")) {
                if let Some(t) = cpu_ticks(&s) {
                    threads.insert(tid, (thread_name(&s), t));
                }
            }
        }
    }
    Some(ProcReading {
        cpu_ticks: cpu_ticks(&stat)?,
        rss_bytes: rss_kb * 1024,
        threads,
    })
}

/// CPU ticks this process used so far.
pub fn own_cpu_ticks() -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Machine-wide UDP counters (IPv4) of `/proc/net/snmp`: datagrams the kernel dropped because
/// a socket's receive buffer was full, and sends refused for a full send buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpDrops {
    pub receive_buffer: u64,
    pub send_buffer: u64,
}

pub fn udp_drops() -> Option<UdpDrops> {
    parse_udp_drops(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_udp_drops(snmp: &str) -> Option<UdpDrops> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |n: &str| -> Option<u64> {
        let i = names.iter().position(|x| *x == n)?;
        values.get(i)?.parse().ok()
    };
    Some(UdpDrops {
        receive_buffer: get("RcvbufErrors")?,
        send_buffer: get("SndbufErrors")?,
    })
}

/// The process named `name` (as in `/proc/<pid>/comm`), if exactly one runs.
pub fn find_by_name(name: &str) -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"));
        // comm is cut to 15 bytes.
        let short = &name[..name.len().min(15)];
        if comm.is_ok_and(|c| c.trim_end() == short) {
            found.push(pid);
        }
    }
    (found.len() == 1).then(|| found[0])
}

/// CPU use between two readings `secs` apart, in percent of one core: the whole process, and
/// each thread (name, percent), busiest first.
pub fn cpu_between(a: &ProcReading, b: &ProcReading, secs: f64) -> (f64, Vec<(String, f64)>) {
    let hz = clock_ticks_per_sec();
    let pct = |ticks: u64| ticks as f64 / hz / secs.max(1e-6) * 100.0;
    let total = pct(b.cpu_ticks.saturating_sub(a.cpu_ticks));
    let mut threads: Vec<(String, f64)> = b
        .threads
        .iter()
        .map(|(tid, (name, t))| {
            let before = a.threads.get(tid).map(|x| x.1).unwrap_or(0);
            (name.clone(), pct(t.saturating_sub(before)))
        })
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    (total, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let s = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_ticks(s), Some(267));
        assert_eq!(thread_name(s), "tokio (rt) 1");
        assert_eq!(cpu_ticks("7 (x) S 1"), None);
    }

    #[test]
    fn parses_udp_counters() {
        let snmp = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 0 7 12 7 2\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(
            parse_udp_drops(snmp),
            Some(UdpDrops {
                receive_buffer: 7,
                send_buffer: 2
            })
        );
        assert!(udp_drops().is_some());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let r = read(me).expect("own /proc entry");
        assert!(r.rss_bytes > 0);
        assert!(!r.threads.is_empty());
    }
}
