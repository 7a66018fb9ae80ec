//! A software TPM per test host: Debian's `swtpm` on loopback ports of its
//! own, with a fresh state (its own endorsement seed, so its own EK), and
//! tpm2-tools to change a PCR as a changed boot would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::child::Killed;

pub struct SwTpm {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Killed>,
}

impl SwTpm {
    /// Starts a swtpm with a new state directory (a new TPM).
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut tpm = Self {
            port: 0,
            dir,
            process: None,
        };
        tpm.spawn()?;
        Ok(tpm)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // libtss2's swtpm TCTI finds the control channel at port + 1: with
        // any other port its control commands reach whatever listens there
        // (another test's TPM) and the call hangs.
        let port = crate::ports::free_port_pair()?;
        let ctrl = port + 1;
        // libtss2 opens its sockets without CLOEXEC: a swtpm started while
        // an agent of this process is talking to its own TPM would inherit
        // that connection and hold it open, and that TPM (one connection at
        // a time) would wait on it for good. The shell closes every
        // descriptor it inherited but stdio, then becomes swtpm.
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done; exec swtpm "$@""#)
            .arg("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.dir.path().display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting swtpm (Debian package swtpm; .ci/run installs it)")?;
        let child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("swtpm did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.port = port;
        self.process = Some(child);
        Ok(())
    }

    /// The agent's `[identity] tpm` for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Extends `pcr` (SHA-256 bank) with the digest of `data`, as a boot
    /// that loaded something else would have.
    pub fn extend(&self, pcr: u32, data: &[u8]) -> anyhow::Result<()> {
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, data));
        let out = Command::new("tpm2_pcrextend")
            .arg("-T")
            .arg(self.tcti())
            .arg(format!("{pcr}:sha256={digest}"))
            .output()
            .context("running tpm2_pcrextend (Debian package tpm2-tools; .ci/run installs it)")?;
        if !out.status.success() {
            bail!("tpm2_pcrextend failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Writes `der` as the TPM's ECC P-256 EK certificate (TCG NV index
    /// 0x01c0000a), as a TPM vendor provisions it.
    pub fn write_ek_certificate(&self, der: &[u8]) -> anyhow::Result<()> {
        let file = self.dir.path().join("ek-cert.der");
        std::fs::write(&file, der)?;
        let size = der.len().to_string();
        let tcti = self.tcti();
        let steps: [Vec<&str>; 2] = [
            vec![
                "tpm2_nvdefine",
                "-T",
                &tcti,
                "0x01c0000a",
                "-C",
                "o",
                "-s",
                &size,
                "-a",
                "ownerread|ownerwrite|authread|no_da",
            ],
            vec![
                "tpm2_nvwrite",
                "-T",
                &tcti,
                "0x01c0000a",
                "-C",
                "o",
                "-i",
                file.to_str().context("temp path")?,
            ],
        ];
        for argv in steps {
            let out = Command::new(argv[0]).args(&argv[1..]).output()?;
            if !out.status.success() {
                bail!("{} failed: {}", argv[0], String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Stops (`true`) or resumes the TPM process: a TPM that stops answering.
    pub fn pause(&self, pause: bool) -> anyhow::Result<()> {
        let process = self.process.as_ref().context("swtpm is not running")?;
        crate::child::pause_process(process, pause)
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }
}
