//! The same primitives through OpenSSL (`openssl speed`, one core) on the
//! same CPU in the same run: when ring and OpenSSL agree, a limit is the
//! machine's, not the library's.

use std::process::Command;

fn speed(args: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl")
        .arg("speed")
        .args(args)
        .output()
        .map_err(|e| format!("openssl not installed ({e}): apt-get install openssl"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl speed {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SHA-256 bytes per second over 1 MiB blocks (`-evp sha256`: SHA-NI where the CPU has it).
pub fn sha256_rate(seconds: u32) -> Result<f64, String> {
    let secs = seconds.max(1).to_string();
    let out = speed(&["-seconds", &secs, "-bytes", "1048576", "-evp", "sha256"])?;
    // "sha256   1126520.15k": thousands of bytes per second.
    out.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("sha256"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.strip_suffix('k'))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|k| k * 1000.0)
        .ok_or_else(|| format!("no sha256 figure in `openssl speed` output:\n{out}"))
}

/// Ed25519 verifications per second.
pub fn ed25519_verify_rate(seconds: u32) -> Result<f64, String> {
    let secs = seconds.max(1).to_string();
    let out = speed(&["-seconds", &secs, "ed25519"])?;
    // " 253 bits EdDSA (Ed25519)   0.0001s   0.0002s  12304.7   4943.0": sign/s, verify/s last.
    out.lines()
        .find(|l| l.contains("(Ed25519)") && l.contains("bits"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no Ed25519 figure in `openssl speed` output:\n{out}"))
}
