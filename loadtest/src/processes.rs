//! Processes a campaign starts itself (e.g. `cleave worker …` replicas) or knows by PID file, and the faults it
//! injects into them: SIGKILL (a crash) or SIGTERM (a graceful stop) at a set time.
//!
//! Invariant: every process this set started is stopped when the set is dropped (SIGTERM, then SIGKILL after 5 s),
//! so a failed campaign leaves nothing running. Processes known only by PID file are faulted, never stopped at the
//! end. Cost: one `kill` per fault; children's output goes to `logs/NAME.log` in the output directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::campaign::{FaultAction, ProcessSpec};
use crate::error::LoadError;

#[derive(Debug)]
struct Managed {
    name: String,
    pid_file: Option<PathBuf>,
    child: Option<Child>,
}

/// The campaign's processes, by name.
#[derive(Debug, Default)]
pub struct ProcessSet {
    processes: Mutex<Vec<Managed>>,
}

/// `cleave` means this very binary when the tool runs as `cleave load` (so a campaign needs no PATH set-up).
fn program(name: &str) -> PathBuf {
    if name == "cleave"
        && let Ok(exe) = std::env::current_exe()
        && exe.file_stem().is_some_and(|s| s == "cleave")
    {
        return exe;
    }
    PathBuf::from(name)
}

impl ProcessSet {
    /// Starts every process with a command, in order, waiting each one's `start_delay_s`.
    pub async fn start(specs: &[ProcessSpec], log_dir: &Path) -> Result<ProcessSet, LoadError> {
        let set = ProcessSet::default();
        if specs.iter().any(|p| !p.command.is_empty()) {
            std::fs::create_dir_all(log_dir).map_err(|source| LoadError::Write {
                path: log_dir.to_path_buf(),
                source,
            })?;
        }
        for spec in specs {
            let fail = |message: String| LoadError::Process {
                name: spec.name.clone(),
                message,
            };
            let child = match spec.command.split_first() {
                Some((prog, args)) => {
                    let log_path = log_dir.join(format!("{}.log", spec.name));
                    let log =
                        std::fs::File::create(&log_path).map_err(|e| fail(format!("{}: {e}", log_path.display())))?;
                    let err = log.try_clone().map_err(|e| fail(e.to_string()))?;
                    let child = Command::new(program(prog))
                        .args(args)
                        .stdin(Stdio::null())
                        .stdout(log)
                        .stderr(err)
                        .spawn()
                        .map_err(|e| fail(format!("starting {prog}: {e}")))?;
                    Some(child)
                }
                None => None,
            };
            set.lock().push(Managed {
                name: spec.name.clone(),
                pid_file: spec.pid_file.as_ref().map(PathBuf::from),
                child,
            });
            if spec.start_delay_s > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(spec.start_delay_s)).await;
            }
        }
        Ok(set)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Managed>> {
        self.processes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The PID of a named process (read from its PID file when it has one).
    pub fn pid(&self, name: &str) -> Result<u32, LoadError> {
        let procs = self.lock();
        let fail = |message: String| LoadError::Process {
            name: name.into(),
            message,
        };
        let p = procs
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| fail("no such process".into()))?;
        match (&p.child, &p.pid_file) {
            (Some(child), _) => Ok(child.id()),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| fail(format!("{}: {e}", file.display())))?
                .trim()
                .parse()
                .map_err(|e| fail(format!("{}: {e}", file.display()))),
            (None, None) => Err(fail("has neither a command nor a pid_file".into())),
        }
    }

    /// Sends the fault's signal to the named process.
    pub fn fault(&self, name: &str, action: FaultAction) -> Result<(), LoadError> {
        let pid = self.pid(name)?;
        signal(pid, action).map_err(|message| LoadError::Process {
            name: name.into(),
            message,
        })
    }

    /// SIGTERM to every started child still running, SIGKILL to those still there after 5 s; reaps them all.
    pub fn stop_all(&self) {
        let mut procs = self.lock();
        for p in procs.iter_mut() {
            if let Some(child) = &mut p.child
                && matches!(child.try_wait(), Ok(None))
            {
                let _ = signal(child.id(), FaultAction::Term);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in procs.iter_mut() {
            if let Some(child) = &mut p.child {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
        }
    }
}

impl Drop for ProcessSet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `kill -s SIG PID` (the workspace forbids `unsafe`, so no `libc::kill`).
fn signal(pid: u32, action: FaultAction) -> Result<(), String> {
    let sig = match action {
        FaultAction::Kill => "KILL",
        FaultAction::Term => "TERM",
    };
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {sig} {pid} failed (not running?)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn faults_kill_a_started_process_and_stop_all_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![
            ProcessSpec {
                name: "sleeper".into(),
                command: vec!["sleep".into(), "30".into()],
                pid_file: None,
                start_delay_s: 0.0,
            },
            ProcessSpec {
                name: "by-pid".into(),
                command: vec![],
                pid_file: Some(dir.path().join("pid").display().to_string()),
                start_delay_s: 0.0,
            },
        ];
        let set = ProcessSet::start(&specs, &dir.path().join("logs")).await.unwrap();
        let pid = set.pid("sleeper").unwrap();
        std::fs::write(dir.path().join("pid"), format!("{pid}\n")).unwrap();
        assert_eq!(set.pid("by-pid").unwrap(), pid);
        set.fault("by-pid", FaultAction::Kill).unwrap();
        let start = Instant::now();
        loop {
            let exited = set.lock()[0].child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "SIGKILL did not stop it");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(set.fault("nobody", FaultAction::Term).is_err());
        set.stop_all();
    }
}
