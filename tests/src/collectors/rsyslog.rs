//! A private rsyslog (Debian's rsyslogd, installed by `.ci/run`) as the
//! firm's SIEM collector would run it: imtcp over TLS with its stock
//! netstream drivers (gtls: GnuTLS, which offers TLS 1.2 at most as
//! Debian configures it; ossl: OpenSSL), RFC 5424 structured data parsed
//! by mmpstrucdata, each message written to a file as `SEQ MSG`. Its own
//! config, work directory and port: never the system's rsyslog.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_link::tls::TlsPaths;

use crate::child::Killed;

/// Debian's rsyslog puts it here.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// Which TLS library rsyslog's listener uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// rsyslog-gnutls.
    Gtls,
    /// rsyslog-openssl.
    Ossl,
}

pub struct Rsyslog {
    dir: PathBuf,
    pub port: u16,
    process: Option<Killed>,
}

impl Rsyslog {
    /// Starts rsyslogd on 127.0.0.1:`port` with the server certificate in
    /// `tls`, reading the structured data under `sd_id`; waits until it listens.
    pub fn start(dir: &Path, port: u16, driver: Driver, tls: &TlsPaths, sd_id: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(RSYSLOGD).is_file(),
            "{RSYSLOGD} is missing: install Debian's rsyslog, rsyslog-gnutls and rsyslog-openssl (.ci/run does)"
        );
        std::fs::create_dir_all(dir)?;
        let driver = match driver {
            Driver::Gtls => "gtls",
            Driver::Ossl => "ossl",
        };
        let config = format!(
            r#"global(workDirectory="{dir}" maxMessageSize="8k"
  defaultNetstreamDriver="{driver}"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" streamDriver.name="{driver}" streamDriver.mode="1" streamDriver.authMode="anon")
module(load="mmpstrucdata")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="line" type="list") {{
  property(name="$!rfc5424-sd!{sd_id}!seq") constant(value=" ")
  property(name="msg") constant(value="\n")
}}
action(type="mmpstrucdata")
action(type="omfile" file="{dir}/received.log" template="line")
"#,
            dir = dir.display(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            sd_id = sd_id.to_ascii_lowercase(),
        );
        std::fs::write(dir.join("rsyslog.conf"), config)?;
        let mut r = Self {
            dir: dir.to_path_buf(),
            port,
            process: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts it again after [`Self::kill`] (the same port, file and config).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "rsyslogd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.stderr"))?;
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.process = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {} within 15 s: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default()
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
