//! Fuzz entry `protocol`: arbitrary sequences of acquire / release / crash /
//! reclaim / corrupt / probe, by several actors on several ports in a fresh
//! temp dir, checked step by step against the same reference model as the
//! proptest test (`tests/support/model.rs`). Shared by the libFuzzer target
//! and the stable corpus replay (`tests/fuzz_replay.rs`).
//!
//! Byte format (so corpus files can be written by hand): one byte per op,
//! `kind = b % 6` (0 acquire, 1 release, 2 crash, 3 reclaim, 4 corrupt,
//! 5 probe), actor `= (b / 6) % 3`, port `= (b / 18) % 2`. A corrupt op then
//! reads a selector byte (`% 5`: 0 raw bytes, 1 valid info for another port,
//! 2 valid info for this port naming PID 1, 3 valid info naming this process,
//! 4 a truncated `{"pid":`) and, for raw bytes, a length byte and that many
//! bytes (as many as remain).

#[path = "../../tests/support/model.rs"]
#[allow(dead_code)]
mod model;

use model::{Harness, Op, PORTS};

/// Longest scenario run; longer inputs are cut (keeps each run fast).
const MAX_OPS: usize = 96;

/// Decodes `data` into ops (see the module docs for the format).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut rest = data;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if ops.len() == MAX_OPS {
            break;
        }
        let b = usize::from(b);
        let (actor, port) = ((b / 6) % 3, (b / 18) % 2);
        ops.push(match b % 6 {
            0 => Op::Acquire { actor, port },
            1 => Op::Release { actor, port },
            2 => Op::Crash { actor, port },
            3 => Op::Reclaim { actor, port },
            4 => {
                let (bytes, tail) = corrupt_bytes(rest, port);
                rest = tail;
                Op::Corrupt { port, bytes }
            }
            _ => Op::Probe { port },
        });
    }
    ops
}

fn corrupt_bytes(data: &[u8], port: usize) -> (Vec<u8>, &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let info = |pid: u32, port: u16| {
        format!(r#"{{"pid":{pid},"started_at":"2026-01-30T12:00:00Z","port":{port}}}"#).into_bytes()
    };
    let this_port = PORTS[port % PORTS.len()];
    match selector % 5 {
        0 => {
            let Some((&len, rest)) = rest.split_first() else {
                return (Vec::new(), rest);
            };
            let len = usize::from(len).min(rest.len());
            (rest[..len].to_vec(), &rest[len..])
        }
        1 => (info(1, PORTS[(port + 1) % PORTS.len()]), rest),
        2 => (info(1, this_port), rest),
        3 => (info(std::process::id(), this_port), rest),
        _ => (b"{\"pid\":".to_vec(), rest),
    }
}

/// Runs the scenario encoded in `data` against the model; panics on any
/// disagreement or broken invariant.
pub fn run(data: &[u8]) {
    let ops = decode(data);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut harness = Harness::new(&tmp.path().join("locks"));
    for op in &ops {
        harness.step(op);
    }
    harness.finish();
}
