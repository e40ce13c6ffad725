//! CPU affinity for the per-core mode: which CPUs this process may use, and
//! pinning a process (every thread of it), this one or a child before it
//! runs, to a set of CPUs with `sched_setaffinity` (what `taskset` does; no
//! need for the tool).

use std::fs;
use std::io;

/// A CPU list as Linux writes it (`0-3,6,8-9`; spaces and newlines around
/// are ignored).
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let bad = || format!("not a CPU list: {text:?}");
        let (a, b) = match part.trim().split_once('-') {
            Some((a, b)) => (a, b),
            None => (part.trim(), part.trim()),
        };
        let a: usize = a.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a > b || b >= MAX_CPUS {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The inverse of [`parse_cpu_list`]: `[0, 1, 2, 5]` → `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    parts.join(",")
}

/// CPUs a `cpu_set_t` can name.
const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

fn cpu_set(cpus: &[usize]) -> Result<libc::cpu_set_t, String> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpus.is_empty() {
        return Err("no CPU to pin to".into());
    }
    for &c in cpus {
        if c >= MAX_CPUS {
            return Err(format!("CPU {c} is out of range"));
        }
        // SAFETY: `c` is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    Ok(set)
}

/// The CPUs this thread may run on (`sched_getaffinity`).
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: as in cpu_set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(format!("sched_getaffinity: {}", io::Error::last_os_error()));
    }
    Ok((0..MAX_CPUS)
        // SAFETY: `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins thread `tid` (0: the calling thread) to `cpus`.
fn pin_thread(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpus`; threads it starts afterwards inherit
/// the mask (used before the runtime starts its threads).
pub fn pin_this_thread(cpus: &[usize]) -> Result<(), String> {
    pin_thread(0, &cpu_set(cpus)?)
        .map_err(|e| format!("sched_setaffinity to CPU {}: {e}", format_cpu_list(cpus)))
}

/// Pins every thread of process `pid` to `cpus` (same user or root). A
/// thread started while this runs may escape one pass, so it makes passes
/// until one finds nothing to change. Returns the number of threads.
pub fn pin_process(pid: u32, cpus: &[usize]) -> Result<usize, String> {
    let set = cpu_set(cpus)?;
    let want = format_cpu_list(cpus);
    for _ in 0..5 {
        let tids = task_ids(pid)?;
        let mut changed = 0;
        for &tid in &tids {
            if thread_cpus(pid, tid).is_some_and(|c| format_cpu_list(&c) == want) {
                continue;
            }
            match pin_thread(tid as libc::pid_t, &set) {
                Ok(()) => changed += 1,
                // Exited in between.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(format!(
                        "pinning thread {tid} of pid {pid} to CPU {want}: {e}"
                    ))
                }
            }
        }
        if changed == 0 {
            return Ok(tids.len());
        }
    }
    Ok(task_ids(pid)?.len())
}

fn task_ids(pid: u32) -> Result<Vec<u32>, String> {
    let dir = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("/proc/{pid}/task: {e} (is pid {pid} running?)"))?;
    Ok(dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// The CPUs thread `tid` of `pid` may run on, from its `Cpus_allowed_list`.
pub fn thread_cpus(pid: u32, tid: u32) -> Option<Vec<usize>> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list).ok()
}

/// The CPUs any thread of `pid` may run on, together (None: not readable).
/// A thread that exits while this reads is passed over.
pub fn process_cpus(pid: u32) -> Option<Vec<usize>> {
    let mut all = Vec::new();
    for tid in task_ids(pid).ok()? {
        all.extend(thread_cpus(pid, tid).unwrap_or_default());
    }
    if all.is_empty() {
        return None;
    }
    all.sort_unstable();
    all.dedup();
    Some(all)
}

/// Makes `cmd`'s process start pinned to `cpus` (the mask is set in the
/// child between fork and exec, so every thread it ever starts inherits it).
pub fn pin_command(cmd: &mut tokio::process::Command, cpus: &[usize]) -> Result<(), String> {
    let set = cpu_set(cpus)?;
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes one system call (async-signal-safe) on a value copied in.
    unsafe {
        cmd.pre_exec(move || pin_thread(0, &set));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_both_ways() {
        assert_eq!(
            parse_cpu_list("0-3,6,8-9\n").unwrap(),
            [0, 1, 2, 3, 6, 8, 9]
        );
        assert_eq!(parse_cpu_list("1").unwrap(), [1]);
        assert_eq!(parse_cpu_list(" 2, 0 ").unwrap(), [0, 2]);
        assert!(parse_cpu_list("").unwrap().is_empty());
        for bad in ["a", "3-1", "1-", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
        assert_eq!(format_cpu_list(&[9, 0, 1, 2, 3, 6, 8]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[1]), "1");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn this_process_can_be_read() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let me = std::process::id();
        let mine = process_cpus(me).unwrap();
        assert!(
            allowed.iter().all(|c| mine.contains(c)),
            "{allowed:?} {mine:?}"
        );
        assert!(cpu_set(&[]).is_err());
        assert!(cpu_set(&[MAX_CPUS]).is_err());
    }
}
