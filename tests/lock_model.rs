//! State-machine test: random sequences of acquire / release / reclaim /
//! crash / probe / corrupt by several actors on several ports, some of them
//! run at once, checked step by step against the reference model in
//! `support/model.rs`.
//!
//! The actors are real processes (`support/actors.rs`: this binary re-invoked
//! in actor mode), each with its own PID, so the release rule ("remove the
//! file only if it records me") is decided on real, distinct PIDs; a crash is
//! a SIGKILL and the actor comes back as a new process. The model does not
//! use the library: it predicts every reply, and the checker compares it with
//! the bytes really on disk and with what an uninvolved process probes.
//!
//! 64 cases by default (each spawns processes); `PROPTEST_CASES=1000 cargo
//! test --test lock_model` raises it. Failing cases are saved under
//! `proptest-regressions/`.

// Unix only: the checker reads held lock files, which Windows' mandatory
// byte-range locks refuse.
#![cfg(unix)]

#[path = "support/model.rs"]
mod model;

#[path = "support/actors.rs"]
mod actors;

use actors::{Actor, Actors, ACTOR_ENV};
use model::{Checker, Content, Op, ACTORS, PORTS};
use proptest::prelude::*;

/// The actor processes' `main`: run in actor mode (the env var set by
/// [`Actor::spawn`]), it serves commands until stdin closes. Run as a test, it
/// checks that actors are separate processes reporting their real PIDs.
#[test]
fn actor_process() {
    if let Some(dir) = std::env::var_os(ACTOR_ENV) {
        actors::actor_main(dir.as_ref());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = Actor::spawn(tmp.path());
    let b = Actor::spawn(tmp.path());
    assert_ne!(a.pid(), b.pid());
    assert_ne!(a.pid(), std::process::id());
    assert_ne!(b.pid(), std::process::id());
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        1 => Just(Content::Raw(Vec::new())),
        1 => proptest::collection::vec(any::<u8>(), 1..48).prop_map(Content::Raw),
        // Another actor's (or the holder's own) valid info: the release rule
        // must tell PIDs apart.
        4 => (0..ACTORS).prop_map(Content::InfoOf),
        1 => (0..ACTORS).prop_map(Content::InfoOtherPort),
        1 => Just(Content::Truncated),
    ]
}

fn single() -> impl Strategy<Value = Op> {
    let actor = 0..ACTORS;
    let port = 0..PORTS.len();
    prop_oneof![
        4 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Acquire { actor, port }),
        1 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Wait { actor, port }),
        3 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Release { actor, port }),
        2 => (actor.clone(), port.clone()).prop_map(|(actor, port)| Op::Reclaim { actor, port }),
        1 => actor.clone().prop_map(|actor| Op::Crash { actor }),
        2 => (actor, port.clone()).prop_map(|(actor, port)| Op::Probe { actor, port }),
        3 => (port, content()).prop_map(|(port, content)| Op::Corrupt { port, content }),
    ]
}

/// One actor's part in a concurrent batch.
fn racing(actor: usize) -> impl Strategy<Value = Op> {
    let port = 0..PORTS.len();
    prop_oneof![
        4 => port.clone().prop_map(move |port| Op::Acquire { actor, port }),
        // A waiter racing acquirers, releases and crashes.
        3 => port.clone().prop_map(move |port| Op::Wait { actor, port }),
        2 => port.clone().prop_map(move |port| Op::Release { actor, port }),
        1 => port.prop_map(move |port| Op::Reclaim { actor, port }),
        1 => Just(Op::Crash { actor }),
    ]
}

/// A step: one op, or two or three actors' ops sent at once.
fn step() -> impl Strategy<Value = Vec<Op>> {
    let batch = proptest::sample::subsequence((0..ACTORS).collect::<Vec<_>>(), 2..=ACTORS)
        .prop_flat_map(|actors| actors.into_iter().map(racing).collect::<Vec<_>>())
        .prop_shuffle();
    prop_oneof![
        3 => single().prop_map(|op| vec![op]),
        1 => batch,
    ]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them for proptest's default
        // lookup; cargo runs tests from the package root.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/lock_model.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lock_agrees_with_reference_model(steps in proptest::collection::vec(step(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("locks");
        llmlb::lock::LockDir::create(&dir).unwrap();
        let mut system = Actors::start(&dir);
        let mut checker = Checker::new(&dir, &system);
        for step in &steps {
            checker.step(&mut system, step);
        }
        checker.finish(&mut system);
    }
}

/// A fixed scenario through every transition and both sides of the release
/// rule, so a model bug cannot hide behind lucky generation.
#[test]
fn scripted_scenario_covers_every_transition() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locks");
    llmlb::lock::LockDir::create(&dir).unwrap();
    let mut system = Actors::start(&dir);
    let mut c = Checker::new(&dir, &system);
    let script: Vec<Vec<Op>> = vec![
        vec![Op::Probe { actor: 2, port: 0 }],
        // Two actors race for a free port: exactly one wins.
        vec![
            Op::Acquire { actor: 0, port: 0 },
            Op::Acquire { actor: 1, port: 0 },
        ],
        // Whoever won releases (the loser's release is not allowed: dropped).
        vec![
            Op::Release { actor: 0, port: 0 },
            Op::Release { actor: 1, port: 0 },
        ],
        vec![Op::Acquire { actor: 0, port: 0 }],
        vec![Op::Acquire { actor: 1, port: 0 }],
        vec![Op::Probe { actor: 2, port: 0 }],
        // The holder dies: its file stays, stale, naming its real PID.
        vec![Op::Crash { actor: 0 }],
        vec![Op::Probe { actor: 2, port: 0 }],
        vec![Op::Acquire { actor: 1, port: 0 }],
        vec![Op::Acquire { actor: 2, port: 0 }],
        vec![Op::Reclaim { actor: 1, port: 0 }],
        // Release rule, "not me": the held file now names actor 2, so
        // actor 1's release must leave it (stale, naming actor 2).
        vec![Op::Corrupt {
            port: 0,
            content: Content::InfoOf(2),
        }],
        vec![Op::Acquire { actor: 2, port: 0 }],
        vec![Op::Release { actor: 1, port: 0 }],
        vec![Op::Probe { actor: 0, port: 0 }],
        // Release rule, "me": a file naming the releasing holder goes.
        vec![Op::Acquire { actor: 2, port: 0 }],
        vec![Op::Reclaim { actor: 2, port: 0 }],
        vec![Op::Corrupt {
            port: 0,
            content: Content::InfoOf(2),
        }],
        vec![Op::Release { actor: 2, port: 0 }],
        vec![Op::Probe { actor: 0, port: 0 }],
        // Garbage in a held file: contenders and probes cannot name the holder.
        vec![Op::Acquire { actor: 0, port: 1 }],
        vec![Op::Corrupt {
            port: 1,
            content: Content::Raw(b"garbage".to_vec()),
        }],
        vec![Op::Acquire { actor: 1, port: 1 }],
        // A crash overlapping a contender, and a release overlapping another.
        vec![Op::Crash { actor: 0 }, Op::Acquire { actor: 1, port: 1 }],
        vec![Op::Acquire { actor: 2, port: 1 }],
        vec![
            Op::Release { actor: 2, port: 1 },
            Op::Acquire { actor: 0, port: 1 },
        ],
    ];
    for step in &script {
        assert!(
            step.iter().any(|op| c.allowed(op)),
            "script step not allowed: {step:?}"
        );
        c.step(&mut system, step);
    }
    c.finish(&mut system);
}
