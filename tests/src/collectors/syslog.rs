//! A syslog-over-TLS collector run as a private process (its own config,
//! port and work directory, never the system's), writing each message it
//! receives to `received.log` as `SEQ MSG`, SEQ from the record's
//! structured data. [`super::rsyslog`] and [`super::syslog_ng`] configure
//! one each; the SIEM tests drive them alike.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::Killed;

pub struct Collector {
    name: &'static str,
    dir: PathBuf,
    pub port: u16,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    process: Option<Killed>,
}

impl Collector {
    /// Runs `program args` (with `env`) in `dir`, listening on 127.0.0.1:`port`;
    /// waits until it listens.
    pub(super) fn start(
        name: &'static str,
        dir: &Path,
        port: u16,
        program: PathBuf,
        args: Vec<OsString>,
        env: Vec<(&'static str, OsString)>,
    ) -> anyhow::Result<Self> {
        let mut c = Self {
            name,
            dir: dir.to_path_buf(),
            port,
            program,
            args,
            env,
            process: None,
        };
        c.restart()?;
        Ok(c)
    }

    /// Starts it again after [`Self::kill`] (the same port, file and config).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "{} is already running", self.name);
        let stderr = self.dir.join(format!("{}.stderr", self.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&stderr)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.process = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not listen on {} within 15 s: {}",
                self.name,
                self.port,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `kill -9`: what it had not written is lost on its side.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Every message written so far: (seq from the structured data, text).
    pub fn received(&self) -> Vec<(u64, String)> {
        std::fs::read_to_string(self.dir.join("received.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (seq, msg) = l.split_once(' ')?;
                Some((seq.parse().ok()?, msg.to_string()))
            })
            .collect()
    }
}
