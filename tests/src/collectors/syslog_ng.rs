//! A private syslog-ng (Debian's syslog-ng-core) as the SIEM's collector:
//! its `syslog()` source (RFC 5424 over TLS, octet-counted frames) with its
//! stock OpenSSL, structured data parsed by syslog-ng itself. Debian's
//! package conflicts with rsyslog's (both are the system log daemon), so
//! `.ci/run` unpacks it into [`ROOT`] instead of installing it, with its
//! libraries installed as packages.

use std::path::Path;

use lockstep_link::tls::TlsPaths;

use super::syslog::Collector;

/// Where `.ci/run` unpacks Debian's syslog-ng-core.
pub const ROOT: &str = "/opt/lockstep-ci/syslog-ng";

/// Starts syslog-ng on 127.0.0.1:`port` with the server certificate in
/// `tls`, reading the structured data under `sd_id`; waits until it listens.
pub fn start(dir: &Path, port: u16, tls: &TlsPaths, sd_id: &str) -> anyhow::Result<Collector> {
    let root = Path::new(ROOT);
    let program = root.join("usr/sbin/syslog-ng");
    anyhow::ensure!(
        program.is_file(),
        "{} is missing: unpack Debian's syslog-ng-core into {ROOT} (.ci/run does)",
        program.display()
    );
    std::fs::create_dir_all(dir)?;
    let config = format!(
        r#"@version: 3.38
options {{ keep-hostname(yes); log-msg-size(65536); }};
source s_lockstep {{
  syslog(ip("127.0.0.1") port({port}) transport("tls")
    tls(key-file("{key}") cert-file("{cert}") ca-file("{ca}") peer-verify(optional-untrusted)));
}};
destination d_received {{
  file("{dir}/received.log" template("${{.SDATA.{sd_id}.seq}} ${{MSG}}\n") template-escape(no));
}};
log {{ source(s_lockstep); destination(d_received); }};
"#,
        dir = dir.display(),
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    );
    std::fs::write(dir.join("syslog-ng.conf"), config)?;
    let path = |name: &str| -> std::ffi::OsString { dir.join(name).into() };
    Collector::start(
        "syslog-ng",
        dir,
        port,
        program,
        vec![
            "-F".into(),
            "--no-caps".into(),
            "--stderr".into(),
            "--cfgfile".into(),
            path("syslog-ng.conf"),
            "--module-path".into(),
            root.join("usr/lib/syslog-ng/3.38").into(),
            "--persist-file".into(),
            path("syslog-ng.persist"),
            "--pidfile".into(),
            path("syslog-ng.pid"),
            "--control".into(),
            path("syslog-ng.ctl"),
        ],
        vec![("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng").into())],
    )
}
