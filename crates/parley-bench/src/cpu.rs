//! The server's CPU time, read from `/proc/PID/stat` (Linux): user + system time of every
//! thread of the process, exited ones included (tantivy, say, starts its indexing threads
//! again after each commit, so summing the live threads would miss them). CPU per request is
//! steadier than requests per second on a machine shared with other work.

use std::time::Duration;

/// The process's CPU time so far.
pub fn process_cpu(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected /proc stat line",
        )
    })?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// utime + stime (fields 14 and 15) of a stat line; the command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields count from the last ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_from_after_the_command_name() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(line), Some(1234 + 567));
        assert_eq!(cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn counts_the_work_this_process_does() {
        let own = std::process::id();
        let before = process_cpu(own).unwrap();
        // Work until the count shows 50 ms more (ticks are 10 ms), or give up after 10 s of
        // wall time: a count that does not follow the work fails instead of hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut now = before;
        while now < before + Duration::from_millis(50) && std::time::Instant::now() < deadline {
            for i in 0..100_000u64 {
                std::hint::black_box(i);
            }
            now = process_cpu(own).unwrap();
        }
        assert!(
            now >= before + Duration::from_millis(50),
            "{before:?} → {now:?}"
        );
    }
}
