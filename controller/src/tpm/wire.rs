//! The few TPM 2.0 structures the controller reads (TCG TPM 2.0 Library,
//! Part 2), parsed by hand from their big-endian marshalled form: the
//! controller links no TSS, so a controller host needs no TPM library.
//! Only what lockstep accepts is parsed; anything else is refused.

use ring::digest;

pub const ALG_ECC: u16 = 0x0023;
pub const ALG_SHA256: u16 = 0x000B;
pub const ALG_NULL: u16 = 0x0010;
pub const ALG_AES: u16 = 0x0006;
pub const ALG_CFB: u16 = 0x0043;
pub const ALG_ECDSA: u16 = 0x0018;
pub const ECC_NIST_P256: u16 = 0x0003;
const GENERATED_VALUE: u32 = 0xff54_4347;
const ST_ATTEST_QUOTE: u16 = 0x8018;

// TPMA_OBJECT bits.
pub const FIXED_TPM: u32 = 1 << 1;
pub const FIXED_PARENT: u32 = 1 << 4;
pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
pub const RESTRICTED: u32 = 1 << 16;
pub const DECRYPT: u32 = 1 << 17;
pub const SIGN: u32 = 1 << 18;

/// A structure that is not what lockstep accepts, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(bad(format!("{} ends early", self.what)));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }
    /// A TPM2B: a u16 size, then that many bytes.
    fn sized(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn end(&self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} has {} bytes after its end",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

/// An ECC NIST P-256 key's TPMT_PUBLIC, as lockstep accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    pub attributes: u32,
    /// The object's symmetric algorithm: (AES, 128, CFB) for an EK.
    pub symmetric: Option<(u16, u16, u16)>,
    /// The signing scheme and its hash: (ECDSA, SHA-256) for an AK.
    pub scheme: Option<(u16, u16)>,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
    /// The TPM name: nameAlg (SHA-256) followed by the digest of the bytes.
    pub name: Vec<u8>,
}

impl EccPublic {
    /// The uncompressed point `04 || x || y`, as ring takes it.
    pub fn point(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(65);
        p.push(4);
        p.extend_from_slice(&self.x);
        p.extend_from_slice(&self.y);
        p
    }
}

pub fn parse_ecc_public(bytes: &[u8]) -> Result<EccPublic, WireError> {
    let mut r = Reader {
        bytes,
        what: "the key's TPMT_PUBLIC",
    };
    if r.u16()? != ALG_ECC {
        return Err(bad("the key is not an ECC key (lockstep takes NIST P-256 keys)"));
    }
    if r.u16()? != ALG_SHA256 {
        return Err(bad("the key's name algorithm is not SHA-256"));
    }
    let attributes = r.u32()?;
    let _auth_policy = r.sized()?;
    let symmetric = match r.u16()? {
        ALG_NULL => None,
        alg => Some((alg, r.u16()?, r.u16()?)),
    };
    let scheme = match r.u16()? {
        ALG_NULL => None,
        alg => Some((alg, r.u16()?)),
    };
    if r.u16()? != ECC_NIST_P256 {
        return Err(bad("the key's curve is not NIST P-256"));
    }
    if r.u16()? != ALG_NULL {
        return Err(bad("the key names a KDF (lockstep takes none)"));
    }
    let x = r.sized()?.to_vec();
    let y = r.sized()?.to_vec();
    r.end()?;
    if x.len() != 32 || y.len() != 32 {
        return Err(bad("the key's point is not 32-byte coordinates"));
    }
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    Ok(EccPublic {
        attributes,
        symmetric,
        scheme,
        x,
        y,
        name,
    })
}

/// What a TPMS_ATTEST of a quote says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The qualified name of the key that signed.
    pub signer: Vec<u8>,
    /// The caller's nonce.
    pub extra_data: Vec<u8>,
    /// TPM resets (reboots) and restarts: a change says the host rebooted.
    pub reset_count: u32,
    pub restart_count: u32,
    /// The SHA-256 PCRs selected (a bit per PCR, 0-23).
    pub pcrs: Vec<u32>,
    pub pcr_digest: Vec<u8>,
}

pub fn parse_quote(bytes: &[u8]) -> Result<Quote, WireError> {
    let mut r = Reader {
        bytes,
        what: "the quote's TPMS_ATTEST",
    };
    if r.u32()? != GENERATED_VALUE {
        return Err(bad(
            "the quote was not made by a TPM (magic is not TPM_GENERATED_VALUE)",
        ));
    }
    if r.u16()? != ST_ATTEST_QUOTE {
        return Err(bad("the attestation is not a quote"));
    }
    let signer = r.sized()?.to_vec();
    let extra_data = r.sized()?.to_vec();
    let _clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware = r.u64()?;
    let banks = r.u32()?;
    let mut pcrs = Vec::new();
    for _ in 0..banks {
        let hash = r.u16()?;
        let size = r.u8()?;
        let select = r.take(usize::from(size))?;
        if hash != ALG_SHA256 {
            if select.iter().any(|b| *b != 0) {
                return Err(bad("the quote selects PCRs of a bank other than SHA-256"));
            }
            continue;
        }
        for (i, byte) in select.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push(u32::try_from(i * 8 + bit).unwrap_or(u32::MAX));
                }
            }
        }
    }
    let pcr_digest = r.sized()?.to_vec();
    r.end()?;
    Ok(Quote {
        signer,
        extra_data,
        reset_count,
        restart_count,
        pcrs,
        pcr_digest,
    })
}

/// A TPMT_SIGNATURE by ECDSA with SHA-256, as `r || s` (32 bytes each).
pub fn parse_ecdsa_signature(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = Reader {
        bytes,
        what: "the quote's TPMT_SIGNATURE",
    };
    if r.u16()? != ALG_ECDSA || r.u16()? != ALG_SHA256 {
        return Err(bad("the quote's signature is not ECDSA with SHA-256"));
    }
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        let part = r.sized()?;
        if part.len() > 32 {
            return Err(bad("the quote's signature has a part longer than 32 bytes"));
        }
        out.extend(std::iter::repeat_n(0u8, 32 - part.len()));
        out.extend_from_slice(part);
    }
    r.end()?;
    Ok(out)
}

/// TPM2B contents helper for what the controller writes.
pub fn sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}
