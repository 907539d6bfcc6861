//! QEMU's own CPU time, read from /proc while a lab run goes: a clock for guest spans that
//! other processes sharing the host's cores hardly move. A TCG guest's wall clock stretches
//! with every process that competes for the host (on a 2-core machine shared by several
//! builds, the same handoff took 100 ms in one run and 1300 ms in another); the CPU time
//! QEMU's threads spend on it stays close to the work.

use std::collections::HashMap;
use std::path::PathBuf;

pub struct CpuClock {
    tasks: PathBuf,
    /// Run time (ns) per thread at its last reading: a thread that has exited keeps counting
    /// with it, so the clock never goes back.
    seen: HashMap<String, u64>,
}

impl CpuClock {
    pub fn new(pid: u32) -> Self {
        CpuClock {
            tasks: PathBuf::from(format!("/proc/{pid}/task")),
            seen: HashMap::new(),
        }
    }

    /// The run time of all of QEMU's threads so far, in ms (`None` once /proc has no trace
    /// of the process, or on a system without schedstat).
    pub fn now_ms(&mut self) -> Option<f64> {
        let dir = std::fs::read_dir(&self.tasks).ok()?;
        for e in dir.flatten() {
            let tid = e.file_name().to_string_lossy().into_owned();
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                let v = self.seen.entry(tid).or_insert(0);
                *v = (*v).max(ns);
            }
        }
        if self.seen.is_empty() {
            return None;
        }
        Some(self.seen.values().sum::<u64>() as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows_with_work_and_never_goes_back() {
        let mut c = CpuClock::new(std::process::id());
        let a = c
            .now_ms()
            .expect("this process has /proc/self/task/*/schedstat");
        // A thread works, reads the clock itself (so its run time is seen), and exits:
        // its time must stay counted afterwards.
        let (mut c, inside) = std::thread::spawn(move || {
            let mut x = 0u64;
            for i in 0..30_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
            let inside = c.now_ms();
            (c, inside)
        })
        .join()
        .unwrap();
        let inside = inside.unwrap();
        let b = c.now_ms().unwrap();
        assert!(
            inside - a > 1.0,
            "30M multiply-adds took under 1 ms of CPU: {a} → {inside}"
        );
        assert!(
            b >= inside,
            "the clock went back when the thread exited: {inside} → {b}"
        );
    }
}
