//! Topic filters and their matching rules (MQTT 5 §4.7, §4.8.2).

/// Why a topic filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("'#' must be the last level and alone in it")]
    BadMultiLevel,
    #[error("'+' must be alone in its level")]
    BadSingleLevel,
    #[error("malformed shared subscription: $share/<group>/<filter>")]
    BadShare,
    #[error("the topic filter has more levels than allowed")]
    TooManyLevels,
}

/// The levels of a topic name or filter (`a/b` has two).
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|b| *b == b'/').count() + 1
}

/// [`parse_filter`], refusing filters with more than `max_levels` levels.
pub fn parse_filter_within(raw: &str, max_levels: usize) -> Result<ParsedFilter<'_>, FilterError> {
    let parsed = parse_filter(raw)?;
    if level_count(parsed.filter) > max_levels {
        return Err(FilterError::TooManyLevels);
    }
    Ok(parsed)
}

/// A subscription filter split into its optional share group and the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Validates a filter as sent in SUBSCRIBE / UNSUBSCRIBE.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, FilterError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(FilterError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(FilterError::BadShare);
        }
        validate_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    if raw == "$share" {
        return Err(FilterError::BadShare);
    }
    validate_filter(raw)?;
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::BadSingleLevel);
        }
    }
    Ok(())
}

/// Whether `filter` (already validated, without `$share/group/`) matches
/// `topic`. Wildcards in the first level never match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rules() {
        for ok in [
            "a",
            "a/b",
            "+",
            "#",
            "a/+/c",
            "a/#",
            "+/+",
            "/",
            "$SYS/#",
            "$share/g/a/#",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        let p = parse_filter("$share/grp/x/+").unwrap();
        assert_eq!((p.share_group, p.filter), (Some("grp"), "x/+"));
    }

    #[test]
    fn matching_rules() {
        let yes = [
            ("sport/#", "sport"),
            ("sport/#", "sport/tennis/player1"),
            ("#", "a/b"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("a/+/c", "a/b/c"),
            ("+", ""),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/+", "$SYS/x"),
        ];
        let no = [
            ("sport/+", "sport"),
            ("+", "/finance"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b", "a/b/c"),
            ("a/b/c", "a/b"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }
}
