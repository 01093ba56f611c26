//! MQTT levels <-> NATS subject tokens.
//!
//! A NATS subject is tokens separated by `.`; a token is never empty and
//! never holds `.`, space, tab, `*` or `>` (`*` and `>` are the
//! wildcards). MQTT levels may be empty and may hold any character but
//! `+`, `#` (wildcards of filters) and NUL. So every level is escaped:
//! ASCII letters, digits, `-` and `_` stay; every other byte is `~XX`
//! (upper-case hex); an empty level is `~`. A topic is
//! `PREFIX.<level>.<level>...`, so a topic's subject always has as many
//! tokens after the prefix as the topic has levels.
//!
//! Filters: `+` is `*`; `#` is `>` — but MQTT's `a/#` also matches `a`,
//! while NATS's `a.>` needs at least one more token, so a filter ending in
//! `#` is two subjects (`a` and `a.>`; `#` alone is `>` only, as a topic
//! has at least one level). The `$`-topic rule (a filter starting with a
//! wildcard matches no topic starting with `$`) has no NATS equivalent:
//! topics whose first level starts with `$` are published under a second
//! prefix (`PREFIX_SYS`), which wildcard-first filters never subscribe to.

/// The subject prefix of ordinary topics.
pub const PREFIX: &str = "mqtt";
/// The subject prefix of topics whose first level starts with `$`.
pub const PREFIX_SYS: &str = "mqtt_sys";

fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    for &b in level.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push_str(&format!("{b:02X}"));
        }
    }
}

fn prefix_for(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        PREFIX_SYS
    } else {
        PREFIX
    }
}

/// The subject of a topic name.
pub fn topic_subject(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    out.push_str(prefix_for(topic.split('/').next().unwrap_or("")));
    for level in topic.split('/') {
        out.push('.');
        escape_level(level, &mut out);
    }
    out
}

/// The subjects a node subscribes to for a filter (without a
/// `$share/group/` prefix): one, or two for a filter ending in `/#`.
pub fn filter_subjects(filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let first = levels.first().copied().unwrap_or("");
    let prefix = if first == "+" || first == "#" {
        PREFIX
    } else {
        prefix_for(first)
    };
    let mut base = String::from(prefix);
    let mut out = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                if i > 0 {
                    // `a/#` matches `a` itself.
                    out.push(base.clone());
                }
                base.push_str(".>");
                out.push(base);
                return out;
            }
            "+" => base.push_str(".*"),
            l => {
                base.push('.');
                escape_level(l, &mut base);
            }
        }
    }
    out.push(base);
    out
}

/// The topic name of a subject made by [`topic_subject`]; None for any
/// other subject.
pub fn subject_topic(subject: &str) -> Option<String> {
    let (prefix, rest) = subject.split_once('.')?;
    if prefix != PREFIX && prefix != PREFIX_SYS {
        return None;
    }
    let mut levels = Vec::new();
    for token in rest.split('.') {
        levels.push(unescape_token(token)?);
    }
    let topic = levels.join("/");
    let sys = topic.starts_with('$');
    (sys == (prefix == PREFIX_SYS)).then_some(topic)
}

fn unescape_token(token: &str) -> Option<String> {
    if token == "~" {
        return Some(String::new());
    }
    if token.is_empty() {
        return None;
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'~' {
            let hex = token.get(i + 1..i + 3)?;
            if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if keep(v) {
                return None;
            }
            out.push(v);
            i += 3;
        } else if keep(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    /// NATS's subject matching (the oracle of NATS's semantics).
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, tok) in p.iter().enumerate() {
            match *tok {
                ">" => return s.len() > i,
                "*" => {
                    if i >= s.len() {
                        return false;
                    }
                }
                t => {
                    if s.get(i) != Some(&t) {
                        return false;
                    }
                }
            }
        }
        p.len() == s.len()
    }

    /// A NATS token is never empty and never holds `.`, whitespace, `*`, `>`.
    fn valid_subject(s: &str) -> bool {
        s.split('.').all(|t| {
            !t.is_empty()
                && (t == "*" || t == ">" || !t.contains(['*', '>', ' ', '\t', '\r', '\n']))
        })
    }

    #[test]
    fn examples() {
        assert_eq!(topic_subject("a/b"), "mqtt.a.b");
        assert_eq!(topic_subject("a//b c/d.e"), "mqtt.a.~.b~20c.d~2Ee");
        assert_eq!(topic_subject("$SYS/x"), "mqtt_sys.~24SYS.x");
        assert_eq!(topic_subject("/"), "mqtt.~.~");
        assert_eq!(filter_subjects("a/+/#"), ["mqtt.a.*", "mqtt.a.*.>"]);
        assert_eq!(filter_subjects("#"), ["mqtt.>"]);
        assert_eq!(
            filter_subjects("$SYS/#"),
            ["mqtt_sys.~24SYS", "mqtt_sys.~24SYS.>"]
        );
        assert_eq!(subject_topic("mqtt.a.~.b~20c").as_deref(), Some("a//b c"));
        assert_eq!(
            subject_topic("mqtt.a~2e"),
            None,
            "lower-case hex is not ours"
        );
        assert_eq!(subject_topic("other.a"), None);
        assert_eq!(
            subject_topic("mqtt.~24x"),
            None,
            "a $ topic under the plain prefix"
        );
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,3}",
            Just("$SYS".to_string()),
            Just("a.b".to_string()),
            Just("x y".to_string()),
            Just("~".to_string()),
            Just("*".to_string()),
            Just(">".to_string()),
            Just("é".to_string()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![3 => level(), 1 => Just("+".to_string()), 1 => Just("#".to_string())],
            1..5,
        )
        .prop_map(|levels| {
            let n = levels.len();
            levels
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    if l == "#" && i + 1 != n {
                        "+".to_string()
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn topics_round_trip_and_are_valid_subjects(t in topic()) {
            let s = topic_subject(&t);
            prop_assert!(valid_subject(&s), "{}", s);
            prop_assert_eq!(subject_topic(&s), Some(t));
        }

        #[test]
        fn nats_matching_is_mqtt_matching(f in filter(), t in topic()) {
            let subjects = filter_subjects(&f);
            for s in &subjects {
                prop_assert!(valid_subject(s), "{}", s);
            }
            let topic_s = topic_subject(&t);
            let nats = subjects.iter().any(|s| nats_matches(s, &topic_s));
            let mqtt = certmq_core::topic::matches(&f, &t);
            prop_assert_eq!(nats, mqtt, "filter {} topic {} subjects {:?} topic subject {}", f, t, subjects, topic_s);
        }
    }
}
