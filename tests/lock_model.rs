//! State-machine test: random sequences of acquire / release / crash /
//! corrupt / probe / reclaim by several actors (each its own open file, as
//! separate processes would have) on several ports, checked step by step
//! against the reference model in `support/model.rs`.
//!
//! 256 cases by default; `PROPTEST_CASES=10000 cargo test --test lock_model`
//! raises it. Failing cases are saved under `proptest-regressions/`.

#[path = "support/model.rs"]
mod model;

use model::{Harness, Op, ACTORS, PORTS};
use proptest::prelude::*;

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 1..64),
        Just(b"{\"pid\":".to_vec()),
        // Valid-looking info for the wrong port, and for the right one.
        Just(br#"{"pid":1,"started_at":"2026-01-30T12:00:00Z","port":9}"#.to_vec()),
        Just(
            format!(
                r#"{{"pid":1,"started_at":"2026-01-30T12:00:00Z","port":{}}}"#,
                PORTS[0]
            )
            .into_bytes()
        ),
        // Records this very process: a held file overwritten with this is
        // still "ours" for the release rule.
        Just(
            format!(
                r#"{{"pid":{},"started_at":"2026-01-30T12:00:00Z","port":{}}}"#,
                std::process::id(),
                PORTS[1]
            )
            .into_bytes()
        ),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let actor = 0..ACTORS;
    let port = 0..PORTS.len();
    prop_oneof![
        4 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Acquire { actor, port }),
        3 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Release { actor, port }),
        2 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Crash { actor, port }),
        2 => (actor, port.clone()).prop_map(|(actor, port)| Op::Reclaim { actor, port }),
        1 => (port.clone(), garbage()).prop_map(|(port, bytes)| Op::Corrupt { port, bytes }),
        2 => port.prop_map(|port| Op::Probe { port }),
    ]
}

proptest! {
    #[test]
    fn lock_agrees_with_reference_model(ops in proptest::collection::vec(op(), 1..48)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut harness = Harness::new(&tmp.path().join("locks"));
        for op in &ops {
            harness.step(op);
        }
        harness.finish();
    }
}

/// A fixed scenario through every transition, so a model bug cannot hide
/// behind lucky generation: crash, contention on a stale lock, reclaim,
/// corruption of a held file, release.
#[test]
fn scripted_scenario_covers_every_transition() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::new(&tmp.path().join("locks"));
    let script = [
        Op::Probe { port: 0 },
        Op::Acquire { actor: 0, port: 0 },
        Op::Acquire { actor: 1, port: 0 },
        Op::Probe { port: 0 },
        Op::Crash { actor: 0, port: 0 },
        Op::Probe { port: 0 },
        Op::Acquire { actor: 1, port: 0 },
        Op::Acquire { actor: 2, port: 0 },
        Op::Reclaim { actor: 1, port: 0 },
        Op::Corrupt {
            port: 0,
            bytes: b"garbage".to_vec(),
        },
        Op::Probe { port: 0 },
        Op::Acquire { actor: 2, port: 0 },
        Op::Release { actor: 1, port: 0 },
        Op::Probe { port: 0 },
        Op::Acquire { actor: 2, port: 0 },
        Op::Reclaim { actor: 2, port: 0 },
        Op::Release { actor: 2, port: 0 },
        Op::Probe { port: 0 },
    ];
    for op in &script {
        assert!(
            h.precondition(op) || matches!(op, Op::Reclaim { .. }),
            "{op:?}"
        );
        h.step(op);
    }
    h.finish();
}
