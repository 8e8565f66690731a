//! What the bench (and the soak) read about processes from /proc and
//! cgroup v2: the processes of a cgroup, their threads, CPU time, memory
//! and open descriptors.

use std::{fs, ops::Add, path::Path};

/// Pids listed in `<cgroup>/cgroup.procs`.
pub fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Thread ids of `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// CPU time, seconds: in user space and in the kernel; how often the
/// threads were switched out: voluntarily (blocked, e.g. in `epoll_wait`)
/// and not (preempted); and how often the scheduler moved one to another
/// CPU (where it starts with cold caches).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
    pub voluntary_switches: f64,
    pub involuntary_switches: f64,
    pub migrations: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    pub fn minus(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
            voluntary_switches: self.voluntary_switches - before.voluntary_switches,
            involuntary_switches: self.involuntary_switches - before.involuntary_switches,
            migrations: self.migrations - before.migrations,
        }
    }

    /// Every field divided by `n`.
    pub fn per(self, n: f64) -> Cpu {
        Cpu {
            user: self.user / n,
            sys: self.sys / n,
            voluntary_switches: self.voluntary_switches / n,
            involuntary_switches: self.involuntary_switches / n,
            migrations: self.migrations / n,
        }
    }
}

impl Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu {
            user: self.user + o.user,
            sys: self.sys + o.sys,
            voluntary_switches: self.voluntary_switches + o.voluntary_switches,
            involuntary_switches: self.involuntary_switches + o.involuntary_switches,
            migrations: self.migrations + o.migrations,
        }
    }
}

/// utime and stime of `pid` (all its threads), its threads' context
/// switches and migrations; zero when it is gone. The kernel counts time in clock ticks
/// (10 ms), so phases of seconds are precise to a percent or so.
pub fn cpu(pid: u32) -> Cpu {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Cpu::default();
    };
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. utime and stime are fields 14 and 15, so the 12th and
    // 13th after the name.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Cpu::default();
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (voluntary_switches, involuntary_switches, migrations) = threads(pid)
        .into_iter()
        .map(|tid| {
            let (v, n) = switches(pid, tid);
            (v, n, migrations(pid, tid))
        })
        .fold((0, 0, 0), |(v, n, m), (tv, tn, tm)| {
            (v + tv, n + tn, m + tm)
        });
    Cpu {
        user: ticks(11) as f64 / hz,
        sys: ticks(12) as f64 / hz,
        voluntary_switches: voluntary_switches as f64,
        involuntary_switches: involuntary_switches as f64,
        migrations: migrations as f64,
    }
}

/// How often the scheduler moved thread `tid` to another CPU
/// (`se.nr_migrations` in its `sched` file, which kernels built without
/// CONFIG_SCHED_DEBUG do not have: 0 then).
fn migrations(pid: u32, tid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("se.nr_migrations"))
        .and_then(|v| v.trim_start().strip_prefix(':')?.trim().parse().ok())
        .unwrap_or(0)
}

/// One thread's voluntary and involuntary context switches (the process's
/// `status` shows only its main thread's).
fn switches(pid: u32, tid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
    (
        status_field(&status, "voluntary_ctxt_switches:"),
        status_field(&status, "nonvoluntary_ctxt_switches:"),
    )
}

/// A numeric field of a `status` file (a trailing "kB" dropped); 0 when
/// absent.
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory, kB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the most ever resident.
    pub hwm_kb: u64,
}

impl Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss_kb: self.rss_kb + o.rss_kb,
            hwm_kb: self.hwm_kb + o.hwm_kb,
        }
    }
}

/// Open file descriptors of `pid` (0 when it is gone).
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn memory(pid: u32) -> Memory {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Memory {
        rss_kb: status_field(&status, "VmRSS:"),
        hwm_kb: status_field(&status, "VmHWM:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(memory(me).rss_kb > 0);
        assert!(memory(me).hwm_kb >= memory(me).rss_kb / 2);
        assert!(!threads(me).is_empty());
        // stdin, stdout, stderr at least (other tests' files come and go).
        assert!(fd_count(me) >= 3);
        assert_eq!(fd_count(u32::MAX), 0);
        // Burn some user time: it must show (in ticks of 10 ms).
        let before = cpu(me);
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = cpu(me).minus(before);
        assert!(used.user > 0.0 && used.sys >= 0.0, "{used:?}");
        // Sleeping is a voluntary switch, counted on this thread (not on
        // the process: other tests' threads come and go meanwhile).
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let (voluntary, _) = switches(me, tid);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(switches(me, tid).0 > voluntary);
    }

    #[test]
    fn counts_a_thread_moved_to_another_cpu() {
        use crate::bench::loadgen::{allowed_cpus, set_affinity};
        assert!(allowed_cpus() >= 2, "the bench needs two CPUs");
        let me = std::process::id();
        // A thread of its own, so that the test's affinity stays as it is.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u32;
                set_affinity(0, Some(0)).unwrap();
                std::thread::yield_now();
                let before = migrations(me, tid);
                set_affinity(0, Some(1)).unwrap();
                std::thread::yield_now();
                let after = migrations(me, tid);
                assert!(after > before, "{before} -> {after} migrations");
                // And the process's sum has it.
                assert!(cpu(me).migrations >= after as f64);
            });
        });
    }
}
