//! What a TPM quote covers, agreed by the agent that makes it and the
//! controller that checks it: the boot PCRs, and the session PCR that ties
//! the quote to the key this agent run signs its attestations with.

use ring::digest;

/// The boot PCRs (SHA-256 bank): firmware, its configuration, option ROMs,
/// the boot loader and what it loaded (TCG PC Client PFP: 0-7; 8-9 the
/// boot loader's own, as GRUB and systemd-boot measure the kernel there).
pub const BOOT_PCRS: std::ops::RangeInclusive<u32> = 0..=9;

/// The application PCR: reset by the agent at start (PCR 23 is resettable
/// at locality 0) and extended once with [`session_binding`].
pub const SESSION_PCR: u32 = 23;

/// Every PCR a lockstep quote selects, in order.
pub fn quoted_pcrs() -> Vec<u32> {
    BOOT_PCRS.chain(std::iter::once(SESSION_PCR)).collect()
}

/// The digest the agent extends into [`SESSION_PCR`]: its session key and
/// boot id, domain-separated.
pub fn session_binding(session_public_key: &[u8], boot_id: &str) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(b"lockstep-session-v1\0");
    c.update(
        &u32::try_from(session_public_key.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    c.update(session_public_key);
    c.update(boot_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// The value of [`SESSION_PCR`] after a reset and one extend with
/// [`session_binding`]: SHA-256(32 zero bytes || binding).
pub fn session_pcr_value(session_public_key: &[u8], boot_id: &str) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(&[0u8; 32]);
    c.update(&session_binding(session_public_key, boot_id));
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// The quote's PCR digest: SHA-256 over the selected values in index order.
pub fn pcr_digest<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    for v in values {
        c.update(v);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}
