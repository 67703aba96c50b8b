//! `synchronous_standby_names` as Patroni writes it: the value PostgreSQL reads to know which
//! standbys must acknowledge a commit. Which members go in it is the HA core's decision; this
//! file only spells the decision the way PostgreSQL and Patroni's peers read it.

/// The name Patroni's strict mode lists when no standby qualifies: it matches no real standby,
/// so commits wait instead of being accepted unreplicated. Refused as a member name (config).
pub const STRICT_PLACEHOLDER: &str = "__patroni_strict_sync_replica_placeholder__";

/// How the listed standbys acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRule {
    /// `synchronous_mode: on`: the first `num` of the list (PostgreSQL's priority syntax,
    /// written without `FIRST`, as Patroni does).
    Priority,
    /// `synchronous_mode: quorum`: any `num` of the list (`ANY num (...)`).
    Quorum,
}

/// The value for `synchronous_standby_names`: `num` of `names` (application names, that is
/// member names) must acknowledge. Names are sorted and quoted where PostgreSQL needs it; with
/// no names the value is empty (asynchronous), unless `strict`, when commits must wait for the
/// placeholder.
pub fn render(rule: SyncRule, num: usize, names: &[String], strict: bool) -> String {
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut names: Vec<String> = sorted.into_iter().map(quote).collect();
    if names.is_empty() {
        if !strict {
            return String::new();
        }
        names.push(STRICT_PLACEHOLDER.to_owned());
    }
    let num = num.clamp(1, names.len());
    match rule {
        SyncRule::Priority if names.len() == 1 => names.remove(0),
        SyncRule::Priority => format!("{num} ({})", names.join(",")),
        SyncRule::Quorum => format!("ANY {num} ({})", names.join(",")),
    }
}

/// A standby name as it must appear in the list: bare when it is a plain identifier (and not
/// one of the list's keywords), double-quoted otherwise (`"postgres-1"`), quotes doubled.
fn quote(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    let keyword = name.eq_ignore_ascii_case("first") || name.eq_ignore_ascii_case("any");
    match plain && !keyword {
        true => name.to_owned(),
        false => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::SyncRule as Rule;
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_name_is_written_alone_and_several_with_their_count() {
        assert_eq!(render(Rule::Priority, 1, &names(&["m2"]), false), "m2");
        assert_eq!(
            render(Rule::Priority, 2, &names(&["m2", "m1"]), false),
            "2 (m1,m2)"
        );
        assert_eq!(
            render(Rule::Quorum, 1, &names(&["m2", "m1"]), false),
            "ANY 1 (m1,m2)"
        );
        // More asked for than there are: all of them.
        assert_eq!(
            render(Rule::Quorum, 5, &names(&["b", "a"]), false),
            "ANY 2 (a,b)"
        );
    }

    #[test]
    fn names_postgresql_would_misread_are_quoted() {
        assert_eq!(
            render(Rule::Priority, 1, &names(&["postgres-1"]), false),
            "\"postgres-1\""
        );
        assert_eq!(
            render(Rule::Priority, 2, &names(&["first", "a$b"]), false),
            "2 (a$b,\"first\")"
        );
        assert_eq!(
            render(Rule::Priority, 1, &names(&["9lives"]), false),
            "\"9lives\""
        );
        assert_eq!(
            render(Rule::Priority, 1, &names(&["say\"hi"]), false),
            "\"say\"\"hi\""
        );
    }

    #[test]
    fn no_standby_is_asynchronous_unless_strict() {
        assert_eq!(render(Rule::Priority, 1, &[], false), "");
        assert_eq!(render(Rule::Priority, 1, &[], true), STRICT_PLACEHOLDER);
        assert_eq!(
            render(Rule::Quorum, 1, &[], true),
            format!("ANY 1 ({STRICT_PLACEHOLDER})")
        );
    }
}
