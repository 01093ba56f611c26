//! The subscription trie's fuzz entry point (`fuzz/fuzz_targets/tree.rs`;
//! `tests/fuzz_regressions.rs` replays saved inputs).

use std::sync::Arc;

use certmq_codec::SubscriptionOptions;

use crate::topic::{matches, parse_filter};
use crate::tree::{Subscriber, SubscriptionTree};
use crate::{Mailbox, SessionId};

/// Runs the operations encoded in `data` against a trie and checks every
/// match against the brute-force matcher. Never panics except on a
/// disagreement. Each operation: one op byte, one repeat byte, then a
/// string up to the next 0xFF. The string is repeated `repeat * 64 + 1`
/// times joined by `/`, so short inputs make filters and topics thousands
/// of levels deep as well as wide.
pub fn fuzz_tree(data: &[u8]) {
    let mut tree = SubscriptionTree::new();
    let mut live: Vec<(u64, String)> = Vec::new();
    let mut rest = data;
    let mut next_id = 0u64;
    while let [op, repeat, tail @ ..] = rest {
        let end = tail.iter().position(|b| *b == 0xff).unwrap_or(tail.len());
        let (text, after) = tail.split_at(end);
        rest = after.get(1..).unwrap_or(&[]);
        let unit = String::from_utf8_lossy(text);
        let n = usize::from(*repeat) * 64 + 1;
        let s = vec![unit.as_ref(); n].join("/");
        match op % 3 {
            0 => {
                if let Ok(parsed) = parse_filter(&s) {
                    if live.len() < 64 {
                        next_id += 1;
                        tree.insert(
                            &parsed,
                            Subscriber {
                                mailbox: Arc::new(Mailbox::new(
                                    SessionId(next_id),
                                    "fuzz".into(),
                                    1,
                                )),
                                options: SubscriptionOptions::default(),
                                subscription_id: None,
                                check: None,
                            },
                        );
                        live.push((next_id, s));
                    }
                }
            }
            1 => {
                if live.is_empty() {
                    continue;
                }
                let (id, f) = live.remove(usize::from(*repeat) % live.len());
                let removed = parse_filter(&f)
                    .map(|p| tree.remove(&p, SessionId(id)))
                    .unwrap_or(false);
                assert!(removed, "an inserted filter was not found");
            }
            _ => {
                if s.is_empty() || s.contains(['+', '#']) {
                    continue;
                }
                let mut out = Vec::new();
                tree.matches(&s, &mut out);
                let mut got: Vec<u64> = out.iter().map(|(m, _)| m.session().0).collect();
                got.sort_unstable();
                let mut want: Vec<u64> = live
                    .iter()
                    .filter(|(_, f)| parse_filter(f).is_ok_and(|p| matches(p.filter, &s)))
                    .map(|(id, _)| *id)
                    .collect();
                want.sort_unstable();
                // Shared groups deliver to one member each: compare sets
                // only where no group is involved.
                if live.iter().all(|(_, f)| !f.starts_with("$share/")) {
                    assert_eq!(got, want, "trie and brute force disagree");
                }
            }
        }
    }
    assert_eq!(tree.len(), live.len());
}
