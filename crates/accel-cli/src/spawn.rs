//! A daemon started as a child process on a private socket, stopped on drop (or, should
//! this process end without dropping it, when this process's starting thread ends).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `accel daemon` child.
pub struct SpawnedDaemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl SpawnedDaemon {
    /// Starts `accel daemon` with `devices` and waits until it accepts connections.
    pub fn start(devices: &[&str]) -> Result<SpawnedDaemon> {
        Self::start_with(devices, &[])
    }

    /// Like [`SpawnedDaemon::start`], with extra daemon arguments.
    pub fn start_with(devices: &[&str], extra: &[&str]) -> Result<SpawnedDaemon> {
        Self::start_in(&std::env::temp_dir(), devices, extra)
    }

    /// Like [`SpawnedDaemon::start_with`], with its socket and state under `base` (a disk or
    /// a tmpfs, for measurements that depend on it).
    pub fn start_in(base: &Path, devices: &[&str], extra: &[&str]) -> Result<SpawnedDaemon> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("accel-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("accel.sock");
        let exe = std::env::current_exe().context("locating the accel binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("daemon").arg("--socket").arg(&socket).arg("--state-dir").arg(dir.join("state")).stdin(Stdio::null());
        if std::env::var_os("ACCEL_LOG").is_none() {
            cmd.env("ACCEL_LOG", "warn");
        }
        for d in devices {
            cmd.arg("--device").arg(d);
        }
        cmd.args(extra);
        // The daemon goes when this process does, however it ends: `accel bench … | head`
        // ends it by SIGPIPE (main.rs restores the default action), and Drop never runs.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting accel daemon")?;
        let mut daemon = SpawnedDaemon { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while accel::Connection::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("accel daemon exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("accel daemon did not come up within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// Its socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
