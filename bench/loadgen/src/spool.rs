//! `loadgen spool-ceiling`: how many spool commits per second this file system can do at all.
//!
//! Each of `concurrency` threads repeats what a spool commit of one message in one file
//! costs at the least: create a file in `tmp/`, write the message, `fdatasync` it, rename it
//! into `queue/`, then wait for a directory fsync of `queue/` that started after the rename
//! (group commit: whoever arrives while no fsync runs does one for everybody waiting, as
//! mxgate's spool does). No SMTP, no parsing, no network: the rate is the ceiling a gateway
//! with a durable queue can reach on this disk at this concurrency.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::stats::{json_str, self_cpu_seconds};

/// What `spool-ceiling` measures: where, how many, how big, how many at once.
pub struct Params {
    /// Directory to work in (created; `tmp/` and `queue/` inside are removed afterwards).
    pub dir: PathBuf,
    /// Threads committing at the same time.
    pub concurrency: usize,
    /// Files to commit in total.
    pub files: u64,
    /// Bytes per file.
    pub size: usize,
    /// Label copied into the JSON.
    pub label: String,
}

/// Group commit of one directory's fsync (the same protocol as mxgate's `spool::group`).
struct DirSync {
    dir: File,
    state: Mutex<(u64, u64, bool)>, // issued, durable, running
    cv: Condvar,
    fsyncs: AtomicU64,
}

impl DirSync {
    fn sync(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = s.0;
        s.0 += 1;
        loop {
            if s.1 > ticket {
                return Ok(());
            }
            if s.2 {
                s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s.2 = true;
            let to = s.0;
            drop(s);
            let r = self.dir.sync_all();
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.2 = false;
            s.1 = to;
            self.cv.notify_all();
            r?;
        }
    }
}

/// One commit: write, fdatasync, rename, group directory fsync.
fn commit(tmp: &Path, queue: &Path, ds: &DirSync, data: &[u8], i: u64) -> io::Result<()> {
    let name = format!("{i}.msg");
    let src = tmp.join(&name);
    let mut f = File::create(&src)?;
    f.write_all(data)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&src, queue.join(&name))?;
    ds.sync()
}

/// Runs the measurement and returns the JSON report.
pub fn run(p: Params) -> Result<String, String> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("{what}: {e}")
    };
    let tmp = p.dir.join("tmp");
    let queue = p.dir.join("queue");
    fs::create_dir_all(&tmp).map_err(err("create tmp/"))?;
    fs::create_dir_all(&queue).map_err(err("create queue/"))?;
    let ds = Arc::new(DirSync {
        dir: File::open(&queue).map_err(err("open queue/"))?,
        state: Mutex::new((0, 0, false)),
        cv: Condvar::new(),
        fsyncs: AtomicU64::new(0),
    });
    let data: Arc<Vec<u8>> = Arc::new((0..p.size).map(|i| b'a' + (i % 26) as u8).collect());
    let next = Arc::new(AtomicU64::new(0));
    let threads = p.concurrency.max(1);
    let start_line = Arc::new(Barrier::new(threads + 1));
    let mut handles: Vec<std::thread::JoinHandle<io::Result<Vec<Duration>>>> = Vec::new();
    for _ in 0..threads {
        let (ds, data, next, start_line) =
            (ds.clone(), data.clone(), next.clone(), start_line.clone());
        let (tmp, queue, files) = (tmp.clone(), queue.clone(), p.files);
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            start_line.wait();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files {
                    return Ok(lat);
                }
                let t = Instant::now();
                commit(&tmp, &queue, &ds, &data, i)?;
                lat.push(t.elapsed());
            }
        }));
    }
    let cpu0 = self_cpu_seconds();
    start_line.wait();
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => lat.extend(l),
            Ok(Err(e)) => first_err = first_err.or(Some(format!("commit: {e}"))),
            Err(_) => first_err = first_err.or(Some("a commit thread panicked".into())),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu0;
    // Clean up outside the measurement.
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&queue);
    if let Some(e) = first_err {
        return Err(e);
    }
    lat.sort();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let n = lat.len() as f64;
    Ok(format!(
        "{{\"label\":{},\"dir\":{},\"concurrency\":{threads},\"files\":{},\"size\":{},\
         \"elapsed_s\":{elapsed:.4},\"files_per_s\":{:.1},\"dir_fsyncs\":{},\"client_cpu_s\":{cpu:.3},\
         \"commit_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3}}}}}",
        json_str(&p.label),
        json_str(&p.dir.display().to_string()),
        lat.len(),
        p.size,
        n / elapsed,
        ds.fsyncs.load(Ordering::Relaxed),
        q(0.5),
        q(0.9),
        q(0.99),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_every_file_and_shares_directory_fsyncs() {
        let dir = std::env::temp_dir().join(format!("loadgen-spool-{}", std::process::id()));
        let out = run(Params {
            dir: dir.clone(),
            concurrency: 8,
            files: 64,
            size: 4096,
            label: "t".into(),
        })
        .unwrap();
        assert!(out.contains("\"files\":64,"), "{out}");
        let fsyncs: u64 = out
            .split("\"dir_fsyncs\":")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!((1..=64).contains(&fsyncs), "{out}");
        assert!(!dir.join("queue").exists(), "cleaned up");
        fs::remove_dir_all(&dir).unwrap();
    }
}
