//! Every part's refusal becomes a status with its stable reason, in one
//! place (`ApiError` into `Status`); the message stays the operator's text.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_controller::enrollment::EnrollError;
use lockstep_controller::error::{ApiError, LookupError};
use lockstep_controller::fleet::auth::AuthError;
use lockstep_controller::halts::HaltError;
use lockstep_controller::releases::ReleaseError;
use lockstep_proto::reason as r;
use tonic::{Code, Status};

#[test]
fn every_status_carries_its_stable_reason() {
    let cases: Vec<(ApiError, Code, &str)> = vec![
        (
            AuthError::NotPinned {
                host: "smars-01".into(),
            }
            .into(),
            Code::FailedPrecondition,
            r::KEY_NOT_PINNED,
        ),
        (
            AuthError::Revoked {
                host: "smars-01".into(),
                by: "alice".into(),
                reason: "lost".into(),
                removed: false,
            }
            .into(),
            Code::PermissionDenied,
            r::HOST_REVOKED,
        ),
        (
            ReleaseError::TwoPersonRule {
                who: "carol".into(),
                number: 2,
            }
            .into(),
            Code::PermissionDenied,
            r::TWO_PERSON_RULE,
        ),
        (
            HaltError::NothingActive {
                scope: "the fleet".into(),
            }
            .into(),
            Code::NotFound,
            r::NO_ACTIVE_HALT,
        ),
        (
            EnrollError::TokenRefused("used".into()).into(),
            Code::PermissionDenied,
            r::TOKEN_REFUSED,
        ),
        (
            LookupError::NoRelease { number: 9 }.into(),
            Code::NotFound,
            r::NOT_FOUND,
        ),
        (ApiError::Internal("bug".into()), Code::Internal, r::INTERNAL),
    ];
    for (e, code, want) in cases {
        let text = e.to_string();
        let s = Status::from(e);
        assert_eq!((s.code(), r::of(&s).as_deref()), (code, Some(want)), "{text}");
        assert_eq!(s.message(), text, "the message stays the operator's text");
    }
}
