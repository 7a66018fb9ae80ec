//! How an EK is trusted at enrollment. With TPM vendor CAs configured
//! (`[tpm] ek_ca`), the TPM's EK certificate must be for that EK and signed
//! by one of them (the CA file may hold an intermediate the firm trusts);
//! without, the EK is pinned at the host's first enrollment.

use std::path::PathBuf;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::TpmError;
use super::wire::EccPublic;

fn refused(why: String) -> TpmError {
    TpmError::BadKey(why)
}

/// The trust an EK gets: `Some(text)` when its certificate chains to a
/// configured vendor CA, `None` when no CA is configured (pinned).
pub fn trust(cert_der: &[u8], ek: &EccPublic, cas: &[PathBuf]) -> Result<Option<String>, TpmError> {
    if cas.is_empty() {
        return Ok(None);
    }
    if cert_der.is_empty() {
        return Err(refused(
            "the TPM has no EK certificate (NV index 0x01c0000a) and [tpm] ek_ca requires one from a configured vendor CA"
                .into(),
        ));
    }
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| refused(format!("the EK certificate is not X.509 DER: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != ek.point().as_slice() {
        return Err(refused(format!(
            "the EK certificate (subject {}) is for another key than this TPM's EK",
            cert.subject()
        )));
    }
    for path in cas {
        let pem = std::fs::read(path).map_err(|e| {
            TpmError::Config(format!(
                "cannot read TPM vendor CA {} ([tpm] ek_ca): {e}",
                path.display()
            ))
        })?;
        for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
            let block =
                block.map_err(|e| TpmError::Config(format!("{} ([tpm] ek_ca) is not PEM: {e}", path.display())))?;
            let Ok(ca) = block.parse_x509() else {
                return Err(TpmError::Config(format!(
                    "{} ([tpm] ek_ca) holds a PEM block that is not a certificate",
                    path.display()
                )));
            };
            if ca.subject() == cert.issuer() && cert.verify_signature(Some(ca.public_key())).is_ok() {
                return Ok(Some(format!(
                    "EK certificate signed by TPM vendor CA \"{}\" ({})",
                    ca.subject(),
                    path.display()
                )));
            }
        }
    }
    Err(refused(format!(
        "the EK certificate (issuer {}) is not signed by a configured TPM vendor CA ([tpm] ek_ca): a TPM from a vendor the firm does not trust, or a CA missing from the config",
        cert.issuer()
    )))
}
