//! The broker's resource use from `/proc/<pid>`: resident memory and CPU time
//! (the whole process's, and each thread's with its name), and finding the
//! pid of the process listening on a port.

use std::fs;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime, stime).
pub fn read(pid: u32) -> Option<Reading> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_seconds = parse_stat_cpu(&stat)? / clock_ticks();
    Some(Reading {
        rss_kib,
        cpu_seconds,
    })
}

/// User + system CPU seconds of process `pid`, every thread included (live
/// ones and those that exited), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat_cpu(&stat)? / clock_ticks())
}

/// One thread's CPU time.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadCpu {
    pub tid: u32,
    /// As `/proc/<pid>/task/<tid>/comm` says it: at most 15 bytes, so
    /// longer names come cut short.
    pub name: String,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// Every live thread of process `pid` with its name and CPU time, by tid
/// (empty when the process is gone or not readable). A thread that exits
/// while this reads is left out.
pub fn threads(pid: u32) -> Vec<ThreadCpu> {
    let ticks = clock_ticks();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<ThreadCpu> = dir
        .flatten()
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let cpu = parse_stat_cpu(&stat)? / ticks;
            // comm is the name alone; stat's copy is the fallback.
            let name = fs::read_to_string(entry.path().join("comm"))
                .ok()
                .map(|c| c.trim_end_matches('\n').to_string())
                .or_else(|| parse_stat_comm(&stat).map(str::to_string))?;
            Some(ThreadCpu {
                tid,
                name,
                cpu_seconds: cpu,
            })
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// The command name (field 2) of a `/proc/<pid>/stat` line: what lies
/// between the first `(` and the last `)`, spaces and parentheses included.
pub fn parse_stat_comm(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    (close > open).then(|| &stat[open + 1..close])
}

/// The pids of the kernel threads named `names` (as `comm` gives them, e.g.
/// `ksoftirqd/0`), in that order, for those found.
pub fn kernel_threads(names: &[String]) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(usize, u32)> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            let i = names
                .iter()
                .position(|n| n == comm.trim_end_matches('\n'))?;
            Some((i, pid))
        })
        .collect();
    found.sort_unstable();
    found.into_iter().map(|(_, pid)| pid).collect()
}

/// One CPU's time since boot, seconds, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime {
    pub cpu: usize,
    /// Not idle: user, nice, system, irq, softirq, and steal (the
    /// hypervisor ran someone else).
    pub busy: f64,
    /// Busy + idle + iowait.
    pub total: f64,
}

/// Every CPU's time since boot (empty when `/proc/stat` is not readable).
pub fn cpu_times() -> Vec<CpuTime> {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_cpu_times(&text, clock_ticks())
}

/// The `cpuN` lines of `/proc/stat` (`ticks` per second). Guest time is
/// already in user time and is not added again.
pub fn parse_cpu_times(text: &str, ticks: f64) -> Vec<CpuTime> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<f64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
            if v.len() < 4 {
                return None;
            }
            let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            Some(CpuTime {
                cpu,
                busy: busy / ticks,
                total: (busy + at(3) + at(4)) / ticks,
            })
        })
        .collect()
}

/// utime + stime in ticks from a `/proc/<pid>/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields count from the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    parse_stat_times(stat).map(|(user, system)| user + system)
}

/// utime and stime apart, in ticks: the time in the process's own code and
/// in the kernel on its behalf (system calls, the network stack they run).
pub fn parse_stat_times(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// User + system CPU seconds of process `pid`, and the system part.
pub fn cpu_and_system_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, system) = parse_stat_times(&stat)?;
    let ticks = clock_ticks();
    Some(((user + system) / ticks, system / ticks))
}

/// The pid of the process with a listening TCP socket on `port` (IPv4 or
/// IPv6), found through `/proc/net/tcp*` and `/proc/*/fd`. Needs permission
/// to read the other process's fds (same user or root).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is "HEX_IP:HEX_PORT"; state 0A is LISTEN; inode is field 9.
            if f.len() > 9 && f[3] == "0A" {
                let p = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok());
                if p == Some(port) {
                    inodes.push(format!("socket:[{}]", f[9]));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 125 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_stat_cpu(line), Some(375.0));
        assert_eq!(parse_stat_times(line), Some((250.0, 125.0)), "utime, stime");
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        // A thread may name itself anything: ") S 1" inside the name must not
        // be taken for the fields after it.
        let line =
            "77 (a) S 1 (b) c) R 1 77 77 0 -1 4194560 9 0 0 0 1200 34 0 0 20 0 1 0 5 1000 200";
        assert_eq!(parse_stat_comm(line), Some("a) S 1 (b) c"));
        assert_eq!(parse_stat_cpu(line), Some(1234.0));
        let actix =
            "4242 (actix-rt|system) S 1 4240 4240 0 -1 4194624 0 0 0 0 7 3 0 0 20 0 6 0 9 1 1";
        assert_eq!(parse_stat_comm(actix), Some("actix-rt|system"));
        assert_eq!(parse_stat_cpu(actix), Some(10.0));
        assert_eq!(parse_stat_comm("()"), Some(""));
        assert_eq!(parse_stat_comm(")("), None);
        assert_eq!(parse_stat_comm("no name"), None);
        // Cut short: fewer fields than stime.
        assert_eq!(parse_stat_cpu("1 (x) S 1 2 3"), None);
    }

    #[test]
    fn cpu_lines_of_proc_stat() {
        let text = "cpu  382010 48843 88952 112318 11820 0 1579 517 0 0\n\
                    cpu0 100 20 30 400 50 1 2 3 7 0\n\
                    cpu1 10 0 0 90 0 0 0 0 0 0\n\
                    intr 3363858 0 0\n";
        let t = parse_cpu_times(text, 100.0);
        assert_eq!(t.len(), 2, "the all-CPUs line is not a CPU");
        assert_eq!(t[0].cpu, 0);
        // user + nice + system + irq + softirq + steal; guest left out.
        assert!((t[0].busy - 1.56).abs() < 1e-9);
        assert!((t[0].total - 6.06).abs() < 1e-9);
        assert_eq!((t[1].cpu, t[1].busy, t[1].total), (1, 0.1, 1.0));
        // Old kernels have fewer columns.
        let old = parse_cpu_times("cpu3 1 2 3 4\n", 1.0);
        assert_eq!((old[0].cpu, old[0].busy, old[0].total), (3, 6.0, 10.0));
        assert!(parse_cpu_times("cpu0 1 2\n", 1.0).is_empty());
        assert!(!cpu_times().is_empty());
    }

    #[test]
    fn kernel_threads_by_name() {
        // Every Linux CPU has its softirq thread; no thread has this name.
        let names = ["ksoftirqd/0".to_string(), "no such thread/0".to_string()];
        let found = kernel_threads(&names);
        assert!(found.len() <= 1);
        if let Some(&pid) = found.first() {
            assert!(cpu_seconds(pid).is_some());
        }
    }

    #[test]
    fn reads_this_process_threads() {
        let me = std::process::id();
        // The thread names itself once running: wait for it to say so.
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::Builder::new()
            .name("lt probe (x)".into())
            .spawn(move || {
                tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
            })
            .unwrap();
        rx.recv().unwrap();
        let mine = threads(me);
        assert!(mine.iter().any(|t| t.tid == me), "{mine:?}");
        assert!(mine.iter().any(|t| t.name == "lt probe (x)"), "{mine:?}");
        assert!(mine.windows(2).all(|w| w[0].tid < w[1].tid));
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        t.join().unwrap();
        assert!(threads(u32::MAX).is_empty());
    }

    #[test]
    fn reads_this_process() {
        let r = read(std::process::id()).expect("own /proc entry");
        assert!(r.rss_kib > 0);
        assert!(r.cpu_seconds >= 0.0);
    }
}
