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

/// A `synchronous_standby_names` value as PostgreSQL reads it: commits wait for `num` of
/// `names`. PostgreSQL's priority form (`FIRST n (...)`, `n (...)`, `a, b`) picks the first
/// `num` connected ones in list order, but which ones those are changes as standbys come and
/// go, so for what a commit's acknowledgement proves both forms read as "some `num` of them".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// How many must acknowledge (0: asynchronous).
    pub num: usize,
    /// The standby names, unquoted, sorted.
    pub names: Vec<String>,
}

/// Reads a value; `None` for one whose standbys cannot be known: `*` (any standby) or text
/// that is not PostgreSQL's syntax.
pub fn parse(value: &str) -> Option<Parsed> {
    let v = value.trim();
    if v.is_empty() {
        return Some(Parsed {
            num: 0,
            names: Vec::new(),
        });
    }
    let (head, list) = match v.find('(') {
        Some(open) => {
            let list = v[open + 1..].trim_end().strip_suffix(')')?;
            (v[..open].trim(), list)
        }
        None => ("", v),
    };
    let mut words = head.split_whitespace();
    let num = match (words.next(), words.next(), words.next()) {
        (None, ..) => None,
        (Some(n), None, _) => Some(n),
        (Some(kw), Some(n), None)
            if kw.eq_ignore_ascii_case("first") || kw.eq_ignore_ascii_case("any") =>
        {
            Some(n)
        }
        _ => return None,
    };
    let mut names = split_names(list)?;
    if names.iter().any(|n| n == "*") {
        return None;
    }
    let num = match num {
        Some(n) => n.parse::<usize>().ok().filter(|n| *n >= 1)?,
        // The old form `a, b` means the first one connected.
        None => 1,
    };
    names.sort_unstable();
    names.dedup();
    Some(Parsed { num, names })
}

/// The comma-separated names of a list, double quotes removed (`""` inside is one quote).
/// Case is kept: PostgreSQL matches standby names case-insensitively, quoted or not.
fn split_names(list: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                name.push(c);
            }
        }
        if name.is_empty() {
            return None;
        }
        names.push(name);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return Some(names),
            Some(',') => continue,
            Some(_) => return None,
        }
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
    #[test]
    fn what_is_written_reads_back() {
        let cases: [(&[&str], usize, Rule); 4] = [
            (&["m2"], 1, Rule::Priority),
            (&["b", "postgres-1"], 2, Rule::Priority),
            (&["first", "say\"hi"], 1, Rule::Quorum),
            (&["a", "b", "c"], 2, Rule::Quorum),
        ];
        for (n, num, rule) in cases {
            let written = render(rule, num, &names(n), false);
            let mut want = names(n);
            want.sort();
            assert_eq!(
                parse(&written),
                Some(Parsed { num, names: want }),
                "{written}"
            );
        }
        assert_eq!(
            parse(&render(Rule::Quorum, 1, &[], true)).unwrap().names,
            vec![STRICT_PLACEHOLDER.to_string()]
        );
    }

    #[test]
    fn postgresql_forms_and_unknowable_values() {
        assert_eq!(parse("").unwrap().num, 0);
        assert_eq!(
            parse("FIRST 2 (A, \"B\")"),
            Some(Parsed {
                num: 2,
                names: names(&["A", "B"])
            })
        );
        assert_eq!(
            parse("m1, m2"),
            Some(Parsed {
                num: 1,
                names: names(&["m1", "m2"])
            })
        );
        for bad in [
            "*",
            "ANY 1 (*)",
            "2 (a",
            "ANY x (a)",
            "ANY 0 (a)",
            "a b",
            "(,)",
            "\"open",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
