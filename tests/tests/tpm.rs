//! TPM-bound hosts, each agent on a real software TPM (Debian's swtpm, a
//! TPM of its own per host): enrollment binds the host to its EK and AK by
//! credential activation; quotes over the boot PCRs and the session PCR
//! keep the gate open; a changed boot PCR closes it naming the PCR until a
//! release approves that boot state; a replayed quote, a copy of the state
//! directory on another TPM, and a TPM that stops answering never open one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

#[path = "support/report_schema.rs"]
mod report_schema;

use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{self, GateState};
use lockstep_tests::fleet::{FleetSpec, reasons_of, state_of};
use lockstep_tests::knight::Morning;

fn tpm_fleet(hosts: usize) -> FleetSpec {
    FleetSpec {
        tpm: true,
        hooks: false,
        scan_interval: Duration::from_secs(1),
        controller_extra: "\n[tpm]\nquote_max_age = \"8s\"\n".into(),
        ..FleetSpec::smars(hosts)
    }
}

/// `lockstep release propose` as alice, `approve` as bob; the number.
async fn release(m: &Morning, args: &[&str]) -> u64 {
    let mut argv = vec!["release", "propose", "--role", "smars"];
    argv.extend_from_slice(args);
    let (code, out) = m.fleet.console(&m.alice, &argv).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let number: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (code, out) = m
        .fleet
        .console(&m.bob, &["release", "approve", &number.to_string()])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    number
}

/// A nonce the controller gives the host `client` speaks for.
async fn fresh_nonce(client: &mut AgentServiceClient<FailoverChannel>) -> Vec<u8> {
    client
        .tpm_nonce(pb::TpmNonceRequest {})
        .await
        .unwrap()
        .into_inner()
        .nonce
}

fn boot_reasons(g: &pb::GateCheckReply, host: &str) -> Vec<String> {
    reasons_of(g, host)
        .into_iter()
        .filter(|r| r.starts_with("boot:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_binds_each_host_to_its_tpm_and_a_changed_boot_pcr_closes_it_until_a_release_approves_it() {
    let m = Morning::with_spec(tpm_fleet(2)).await.unwrap();
    let all = m.all();
    m.install_old(&all).unwrap();
    m.fleet.settle(&all).await.unwrap();
    // Enrollment said how it trusted each EK and that the AK was activated.
    let enrolled = m
        .fleet
        .wait_audit("host.enrolled", "EK pinned at first enrollment")
        .await
        .unwrap();
    assert!(enrolled.contains("TPM attestation key"), "{enrolled}");
    m.fleet.wait_audit("tpm.quoted", "first verified quote").await.unwrap();

    // Release 1 takes its boot state from smars-01's last quote.
    let n = release(&m, &["--from-host", &all[0], "--boot-from", &all[0]]).await;
    m.fleet
        .wait_for("both TPM hosts open on the release's boot state", |g| {
            all.iter().all(|h| state_of(g, h) == GateState::Open)
        })
        .await
        .unwrap();
    let (_, shown) = m.fleet.console(&m.alice, &["host", &all[0]]).await.unwrap();
    assert!(shown.contains("TPM:         bound (EK "), "{shown}");
    assert!(shown.contains(&format!("boot PCRs match release {n}")), "{shown}");
    let (_, listed) = m
        .fleet
        .console(&m.alice, &["release", "list", "--output", "json"])
        .await
        .unwrap();
    assert!(listed.contains("\"boot_from_host\": \"smars-01\""), "{listed}");

    // smars-02 boots another boot loader: PCR 4 moves.
    m.fleet
        .host(&all[1])
        .unwrap()
        .tpm
        .as_ref()
        .unwrap()
        .extend(4, b"another boot loader")
        .unwrap();
    let g = m
        .fleet
        .wait_for("smars-02 closed on its boot state", |g| {
            state_of(g, &all[1]) == GateState::Closed && !boot_reasons(g, &all[1]).is_empty()
        })
        .await
        .unwrap();
    let why = boot_reasons(&g, &all[1]);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].starts_with("boot: PCR 4 sha256 ") && why[0].contains(&format!("!= release {n} (")),
        "{why:?}"
    );
    assert_eq!(state_of(&g, &all[0]), GateState::Open);
    m.fleet
        .wait_local(&all[1..], 1, "smars-02's own gate to close")
        .await
        .unwrap();
    m.fleet.wait_audit("tpm.quoted", "PCRs changed: 4").await.unwrap();

    // The pre-open report says which hosts are TPM-bound and their boot
    // verdict, and holds offline with the TPM column on its page.
    let (code, out) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 8, "a boot state has its own exit code: {out}");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let (code, out) = m
        .fleet
        .console(
            &m.alice,
            &["report", "pre-open", "--role", "smars", "--out-dir", out_dir],
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let json_path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let value = report_schema::checked(&json_path);
    let hosts = value["report"]["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["tpm"]["boot"], format!("boot PCRs match release {n}"));
    assert_eq!(hosts[1]["tpm"]["boot"], format!("PCR 4 differ from release {n}"));
    assert!(
        hosts[0]["tpm"]["ek_trust"]
            .as_str()
            .unwrap()
            .contains("pinned at first enrollment")
    );
    assert_eq!(hosts[1]["tpm"]["quote_max_age_s"], 8);
    let export = dir.path().join("audit.jsonl");
    std::fs::write(&export, m.fleet.audit_records().await.unwrap().join("\n")).unwrap();
    let data_dir = m.fleet.controller.config.data_dir.display().to_string();
    let (_, key_line) = m
        .fleet
        .console(&m.alice, &["pki", "report-key", "--data-dir", &data_dir])
        .await
        .unwrap();
    let key = key_line.trim().rsplit(' ').next().unwrap().to_string();
    for ext in ["json", "html"] {
        let file = json_path.with_extension(ext).display().to_string();
        let audit = export.display().to_string();
        let (code, out) = m
            .fleet
            .console(
                &m.alice,
                &["report", "verify", &file, "--audit", &audit, "--public-key", &key],
            )
            .await
            .unwrap();
        assert!(code == 0 && out.contains("REPORT HOLDS"), "{file}: {out}");
    }
    let page = std::fs::read_to_string(json_path.with_extension("html")).unwrap();
    assert!(
        page.contains("<th>TPM</th>") && page.contains("PCR 4 differ from release"),
        "the page shows the TPM column"
    );

    // The new boot state approved (two people): smars-02 opens, and
    // smars-01, on the old one, now differs.
    let n2 = release(&m, &["--from-release", &n.to_string(), "--boot-from", &all[1]]).await;
    let g = m
        .fleet
        .wait_for("smars-02 open on the approved boot state", |g| {
            state_of(g, &all[1]) == GateState::Open && state_of(g, &all[0]) == GateState::Closed
        })
        .await
        .unwrap();
    let why = boot_reasons(&g, &all[0]);
    assert!(
        why.iter()
            .any(|r| r.contains("PCR 4 sha256") && r.contains(&format!("!= release {n2}"))),
        "{why:?}"
    );
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_quote_and_a_copied_state_directory_on_another_tpm_are_refused_and_recorded() {
    let mut m = Morning::with_spec(tpm_fleet(1)).await.unwrap();
    let host = m.all()[0].clone();
    m.install_old(std::slice::from_ref(&host)).unwrap();
    m.fleet.settle(std::slice::from_ref(&host)).await.unwrap();
    m.fleet.wait_audit("tpm.quoted", "first verified quote").await.unwrap();
    release(&m, &["--from-host", &host]).await;
    m.fleet
        .wait_for("the host open", |g| state_of(g, &host) == GateState::Open)
        .await
        .unwrap();
    m.fleet.stop_agent(&host).await.unwrap();
    let config = m.fleet.host(&host).unwrap().config.clone();
    let settings = config.tpm.clone().unwrap();
    let tpm = lockstep_agent::tpm::Tpm::new(&settings, &config.state_dir);

    // A quote made by the host's own TPM, sent twice: the second is a replay.
    let session =
        lockstep_proto::envelope::Signer::from_pkcs8(&lockstep_proto::envelope::Signer::generate_pkcs8().unwrap())
            .unwrap();
    let boot_id = lockstep_agent::state::boot_id();
    tpm.bind_session(lockstep_proto::tpm::session_binding(session.public_key(), &boot_id))
        .await
        .unwrap();
    let mut client = m.fleet.agent_client(&host).unwrap();
    let nonce = fresh_nonce(&mut client).await;
    let request = tpm
        .quote(nonce.clone())
        .await
        .unwrap()
        .into_request(nonce, session.public_key().to_vec(), boot_id);
    client.tpm_quote(request.clone()).await.unwrap();
    let replayed = client.tpm_quote(request.clone()).await.unwrap_err();
    assert_eq!(replayed.code(), tonic::Code::PermissionDenied, "{replayed:?}");
    assert!(replayed.message().contains("replayed quote"), "{}", replayed.message());
    m.fleet.wait_audit("tpm.quote_refused", "replayed quote").await.unwrap();
    // The PCR values sent must be the quoted ones.
    let nonce = fresh_nonce(&mut client).await;
    let quote = tpm.quote(nonce.clone()).await.unwrap();
    let mut forged = pb::TpmQuoteRequest {
        nonce,
        attest: quote.attest,
        signature: quote.signature,
        ..request.clone()
    };
    forged.pcrs[4].sha256 = vec![7; 32];
    let refused = client.tpm_quote(forged).await.unwrap_err();
    assert!(
        refused.message().contains("not the ones the TPM quoted"),
        "{}",
        refused.message()
    );

    // The whole state directory (keys, AK blob, certificate) copied to a
    // machine with a TPM of its own.
    let other = lockstep_tests::swtpm::SwTpm::start().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copied_state = copy.path().join("state");
    std::fs::create_dir_all(&copied_state).unwrap();
    for entry in std::fs::read_dir(&config.state_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copied_state.join(entry.file_name())).unwrap();
    }
    let other_settings = lockstep_agent::config::TpmSettings {
        tcti: other.tcti(),
        ..settings.clone()
    };
    // Its AK does not load in the other TPM.
    let thief = lockstep_agent::tpm::Tpm::new(&other_settings, &copied_state);
    let err = thief.quote(vec![1; 32]).await.unwrap_err();
    assert!(matches!(err, lockstep_agent::tpm::TpmError::ForeignAk { .. }), "{err}");
    assert!(err.to_string().contains("made by another TPM"), "{err}");
    // An AK made in the other TPM, quoting over the copied certificate:
    // not the AK bound to the host.
    let keys = thief.make_ak().await.unwrap();
    keys.ak.save(&copied_state).unwrap();
    let thief_session =
        lockstep_proto::envelope::Signer::from_pkcs8(&lockstep_proto::envelope::Signer::generate_pkcs8().unwrap())
            .unwrap();
    thief
        .bind_session(lockstep_proto::tpm::session_binding(
            thief_session.public_key(),
            &request.boot_id,
        ))
        .await
        .unwrap();
    let nonce = fresh_nonce(&mut client).await;
    let quote = thief.quote(nonce.clone()).await.unwrap();
    let refused = client
        .tpm_quote(quote.into_request(nonce, thief_session.public_key().to_vec(), request.boot_id.clone()))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("not the bound attestation key's"),
        "{}",
        refused.message()
    );
    m.fleet.wait_audit("tpm.quote_refused", "another TPM").await.unwrap();
    // Attestations signed with the copied file key: not the session key
    // the host's quotes bind.
    let attestation = m
        .fleet
        .attestation(&host, m.fleet.last_seq(&host).unwrap() + 100)
        .unwrap();
    let file_key = m.fleet.host_key(&host).unwrap();
    let refused = client
        .submit(file_key.seal_attestation(&attestation))
        .await
        .unwrap_err();
    assert!(refused.message().contains("TPM-bound"), "{}", refused.message());
    m.fleet
        .wait_audit("attestation.rejected", "a copy of its state directory")
        .await
        .unwrap();
    // Enrolling the copy with a fresh token: another EK, refused.
    let token = m.fleet.join_token(&host).await.unwrap();
    let mut copied_config = config.clone();
    copied_config.state_dir = copied_state.clone();
    copied_config.tpm = Some(other_settings);
    copied_config.controller.tls.key = copy.path().join("agent.key");
    copied_config.controller.tls.cert = copy.path().join("agent.pem");
    let err = lockstep_agent::link::enrollment::enroll(&copied_config, &token, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is bound to TPM EK"), "{err}");
    m.fleet
        .wait_audit("enroll.refused", "is bound to TPM EK")
        .await
        .unwrap();
    assert!(
        !copied_config.controller.tls.key.exists(),
        "a refused enrollment installed nothing"
    );

    // The host itself, its agent back: quotes again and opens.
    m.fleet.start_agent(&host).unwrap();
    m.fleet
        .wait_for("the real host back open", |g| state_of(g, &host) == GateState::Open)
        .await
        .unwrap();
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_that_stops_answering_closes_the_gate_when_its_quote_ages_and_never_opens_it() {
    let m = Morning::with_spec(tpm_fleet(2)).await.unwrap();
    let all = m.all();
    m.install_old(&all).unwrap();
    m.fleet.settle(&all).await.unwrap();
    release(&m, &["--from-host", &all[0], "--boot-from", &all[0]]).await;
    m.fleet
        .wait_for("both open", |g| all.iter().all(|h| state_of(g, h) == GateState::Open))
        .await
        .unwrap();
    m.fleet.wait_local(&all, 0, "local gates open").await.unwrap();
    let silent = &all[1];
    let swtpm = m.fleet.host(silent).unwrap().tpm.as_ref().unwrap();
    swtpm.pause(true).unwrap();
    let g = m
        .fleet
        .wait_for("the silent TPM's host closed", |g| {
            state_of(g, silent) == GateState::Closed
        })
        .await
        .unwrap();
    let why = reasons_of(&g, silent).join("; ");
    assert!(
        why.contains("TPM quote") || why.contains("stale"),
        "closed for the silent TPM: {why}"
    );
    m.fleet
        .wait_local(std::slice::from_ref(silent), 1, "the silent TPM's local gate to close")
        .await
        .unwrap();
    // Closed it stays while the TPM is silent (no report of it may open it).
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(state_of(&m.fleet.gates().unwrap(), silent), GateState::Closed);
        assert_eq!(m.fleet.local_gate_check(silent).unwrap().0, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state_of(&m.fleet.gates().unwrap(), &all[0]), GateState::Open);
    swtpm.pause(false).unwrap();
    m.fleet
        .wait_for("the TPM answers again: open", |g| {
            state_of(g, silent) == GateState::Open
        })
        .await
        .unwrap();
    m.fleet.shutdown().await.unwrap();
}

fn vendor_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// An EK certificate for the EK `ek_public` names, signed by `ca`.
fn ek_certificate(ek_public: &[u8], ca: &rcgen::CertifiedIssuer<'_, rcgen::KeyPair>) -> Vec<u8> {
    let ek = lockstep_controller::tpm::check_ek(ek_public).unwrap();
    // SubjectPublicKeyInfo of a P-256 point: id-ecPublicKey, prime256v1.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend(ek.point());
    let key = rcgen::SubjectPublicKeyInfo::from_der(&spki).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "TPM EK");
    params.signed_by(&key, ca).unwrap().der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_vendor_cas_configured_an_ek_certified_by_one_enrolls_and_any_other_is_refused() {
    let cas = tempfile::tempdir().unwrap();
    let vendor = vendor_ca("Example TPM Vendor EK Root");
    let stranger = vendor_ca("Someone Else");
    let vendor_pem = cas.path().join("vendor.pem");
    std::fs::write(&vendor_pem, vendor.pem()).unwrap();
    let spec = FleetSpec {
        without_agent: vec!["smars-01".into(), "smars-02".into()],
        controller_extra: format!(
            "\n[tpm]\nquote_max_age = \"8s\"\nek_ca = [{:?}]\n",
            vendor_pem.display().to_string()
        ),
        ..tpm_fleet(2)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let all = m.all();
    // Each host's TPM provisioned with an EK certificate: by the vendor the
    // controller trusts, and by someone else.
    for (host, ca) in [(&all[0], &vendor), (&all[1], &stranger)] {
        let h = m.fleet.host(host).unwrap();
        let tpm = lockstep_agent::tpm::Tpm::new(h.config.tpm.as_ref().unwrap(), &h.config.state_dir);
        let keys = tpm.make_ak().await.unwrap();
        assert!(keys.ek_certificate.is_empty(), "a new swtpm has no EK certificate");
        h.tpm
            .as_ref()
            .unwrap()
            .write_ek_certificate(&ek_certificate(&keys.ek_public, ca))
            .unwrap();
    }
    m.fleet.enroll(&all[0]).await.unwrap();
    let enrolled = m
        .fleet
        .wait_audit("host.enrolled", "EK certificate signed by TPM vendor CA")
        .await
        .unwrap();
    assert!(enrolled.contains("Example TPM Vendor EK Root"), "{enrolled}");
    let err = m.fleet.enroll(&all[1]).await.unwrap_err().to_string();
    assert!(err.contains("not signed by a configured TPM vendor CA"), "{err}");
    m.fleet.wait_audit("enroll.refused", "Someone Else").await.unwrap();
    assert!(!m.fleet.host(&all[1]).unwrap().config.controller.tls.key.exists());
    m.fleet.shutdown().await.unwrap();
}
