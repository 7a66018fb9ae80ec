use prost::Message;

use super::*;

fn viewer() -> PeerIdentity {
    PeerIdentity::Operator {
        name: "vic".into(),
        role: OperatorRole::Viewer,
    }
}

fn operator() -> PeerIdentity {
    PeerIdentity::Operator {
        name: "olga".into(),
        role: OperatorRole::Operator,
    }
}

fn approver() -> PeerIdentity {
    PeerIdentity::Operator {
        name: "ann".into(),
        role: OperatorRole::Approver,
    }
}

fn agent() -> PeerIdentity {
    PeerIdentity::Agent {
        host: "smars-01".into(),
    }
}

/// Every method of every lockstep service in the compiled .proto.
fn proto_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(lockstep_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in &file.service {
            for method in &service.method {
                out.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    out
}

#[test]
fn every_method_of_the_proto_is_in_the_table_and_nothing_else() {
    let methods = proto_methods();
    assert!(methods.len() >= 20, "{methods:?}");
    for m in &methods {
        assert!(entry(m).is_some(), "{m} is not in authz::TABLE: say who may call it");
    }
    for (service, method, _) in TABLE {
        let path = format!("{service}{method}");
        assert!(methods.contains(&path), "{path} is in the table but not in the .proto");
    }
}

#[test]
fn each_role_may_make_exactly_its_calls() {
    let who = [viewer(), operator(), approver(), agent()];
    for (service, method, caller) in TABLE {
        let path = format!("{service}{method}");
        for identity in &who {
            let allowed = match (caller, identity) {
                (Caller::Enrollment, _) => true,
                (Caller::Agent, PeerIdentity::Agent { .. }) => true,
                (Caller::Operator(needed), PeerIdentity::Operator { role, .. }) => role >= needed,
                _ => false,
            };
            let decided = decide(&path, Some(identity));
            assert_eq!(decided == Decision::Allow, allowed, "{path} as {identity}: {decided:?}");
        }
    }
    // Spot checks a reader can follow.
    assert_eq!(
        decide("/lockstep.v1.ConsoleService/Halt", Some(&operator())),
        Decision::Allow
    );
    assert_eq!(
        decide("/lockstep.v1.ConsoleService/Halt", Some(&viewer())),
        Decision::Deny("vic has role viewer; this needs the operator role".into())
    );
    assert_eq!(
        decide("/lockstep.v1.ConsoleService/ApproveRelease", Some(&operator())),
        Decision::Deny("olga has role operator; this needs the approver role".into())
    );
    let Decision::Deny(why) = decide("/lockstep.v1.AgentService/Submit", Some(&approver())) else {
        panic!("an operator attested")
    };
    assert!(why.starts_with("only agent certificates may attest"), "{why}");
    let Decision::Deny(why) = decide("/lockstep.v1.ConsoleService/ListHosts", Some(&agent())) else {
        panic!("an agent used the console")
    };
    assert!(
        why.starts_with("console requests need an operator certificate"),
        "{why}"
    );
}

#[test]
fn unknown_lockstep_methods_are_refused_and_others_are_public() {
    assert!(matches!(
        decide("/lockstep.v1.ConsoleService/DropDatabase", Some(&approver())),
        Decision::Deny(_)
    ));
    assert_eq!(decide("/grpc.health.v1.Health/Check", None), Decision::Public);
    assert_eq!(decide("/lockstep.v1.EnrollService/Enroll", None), Decision::Allow);
}
