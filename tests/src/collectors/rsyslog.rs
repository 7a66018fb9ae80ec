//! A private rsyslog (Debian's rsyslogd, installed by `.ci/run`) as the
//! firm's SIEM collector would run it: imtcp over TLS with its stock
//! netstream drivers (gtls: GnuTLS, which offers TLS 1.2 at most as
//! Debian configures it; ossl: OpenSSL), RFC 5424 structured data parsed
//! by mmpstrucdata.

use std::path::{Path, PathBuf};

use lockstep_link::tls::TlsPaths;

use super::syslog::Collector;

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

/// Starts rsyslogd on 127.0.0.1:`port` with the server certificate in
/// `tls`, reading the structured data under `sd_id`; waits until it listens.
pub fn start(dir: &Path, port: u16, driver: Driver, tls: &TlsPaths, sd_id: &str) -> anyhow::Result<Collector> {
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
    Collector::start(
        "rsyslogd",
        dir,
        port,
        PathBuf::from(RSYSLOGD),
        vec![
            "-n".into(),
            "-f".into(),
            dir.join("rsyslog.conf").into(),
            "-i".into(),
            dir.join("rsyslogd.pid").into(),
        ],
        Vec::new(),
    )
}
