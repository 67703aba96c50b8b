//! patronictl's table output: prettytable's frame layout with the cluster title written over
//! the top rule, tab-separated values, or JSON/YAML lists of row objects.

use serde_json::{Map, Value};

/// How a table is printed (`-f/--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A framed table.
    Pretty,
    /// Tab-separated values.
    Tsv,
    /// A JSON list of row objects.
    Json,
    /// A YAML list of row objects.
    Yaml,
    /// Same as yaml.
    Yml,
    /// A framed table ordered by replication topology (`topology`).
    #[value(skip)]
    Topology,
}

/// A cell: text or a number (numbers stay numbers in JSON/YAML).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
        }
    }
    fn json(&self) -> Value {
        match self {
            Cell::Text(s) => Value::String(s.clone()),
            Cell::Int(n) => Value::from(*n),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

/// prettytable's centring: odd excess goes right for odd-length text, left otherwise.
fn center(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let excess = width.saturating_sub(len);
    let (l, r) = if excess % 2 == 1 {
        if len % 2 == 1 {
            (excess / 2, excess / 2 + 1)
        } else {
            (excess / 2 + 1, excess / 2)
        }
    } else {
        (excess / 2, excess / 2)
    };
    format!("{}{text}{}", " ".repeat(l), " ".repeat(r))
}

/// Renders a framed table. `right` lists right-aligned columns; `title` overwrites the start
/// of the top rule (` Cluster: name (sysid) `).
pub fn pretty(columns: &[&str], rows: &[Vec<Cell>], right: &[&str], title: Option<&str>) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.text().chars().count());
            }
        }
    }
    let rule: String = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let top = match title {
        Some(t) => {
            let room = rule.chars().count().saturating_sub(2);
            let t: String = t.chars().take(room).collect();
            let rest: String = rule.chars().skip(1 + t.chars().count()).collect();
            format!("+{t}{rest}")
        }
        None => rule.clone(),
    };
    let line = |cells: Vec<String>, header: bool| {
        let mut s = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            let text = cells.get(i).cloned().unwrap_or_default();
            let pad = w.saturating_sub(text.chars().count());
            let body = if header {
                center(&text, *w)
            } else if right.contains(&columns[i]) {
                format!("{}{text}", " ".repeat(pad))
            } else {
                format!("{text}{}", " ".repeat(pad))
            };
            s.push(' ');
            s.push_str(&body);
            s.push_str(" |");
        }
        s
    };
    let mut out = vec![
        top,
        line(columns.iter().map(|c| c.to_string()).collect(), true),
        rule.clone(),
    ];
    for r in rows {
        out.push(line(r.iter().map(Cell::text).collect(), false));
    }
    out.push(rule);
    out.join("\n")
}

/// Rows as objects for JSON/YAML; with `skip_empty` (tables with a title) empty cells are left
/// out, as patronictl does.
pub fn objects(columns: &[&str], rows: &[Vec<Cell>], skip_empty: bool) -> Vec<Map<String, Value>> {
    rows.iter()
        .map(|r| {
            columns
                .iter()
                .zip(r)
                .filter(|(_, c)| !skip_empty || !c.text().is_empty())
                .map(|(k, c)| ((*k).to_owned(), c.json()))
                .collect()
        })
        .collect()
}

/// Prints a table in `fmt`.
pub fn print(
    fmt: Format,
    columns: &[&str],
    rows: &[Vec<Cell>],
    right: &[&str],
    title: Option<&str>,
) {
    match fmt {
        Format::Json => {
            // json.dumps keeps the column order.
            let v: Vec<crate::api::json::Obj> = rows
                .iter()
                .map(|r| {
                    let mut o = crate::api::json::Obj::new();
                    for (k, c) in columns.iter().zip(r) {
                        if title.is_none() || !c.text().is_empty() {
                            o.push(k, c.json());
                        }
                    }
                    o
                })
                .collect();
            println!("{}", crate::api::json::to_python_json(&v));
        }
        Format::Yaml | Format::Yml => {
            let v = objects(columns, rows, title.is_some());
            print!(
                "{}",
                super::yaml::dump(&Value::Array(v.into_iter().map(Value::Object).collect()))
            );
        }
        Format::Tsv => {
            println!("{}", columns.join("\t"));
            for r in rows {
                println!(
                    "{}",
                    r.iter().map(Cell::text).collect::<Vec<_>>().join("\t")
                );
            }
        }
        Format::Pretty | Format::Topology => println!("{}", pretty(columns, rows, right, title)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_table_with_title() {
        let rows = vec![
            vec![Cell::from("m0"), Cell::Int(1)],
            vec![Cell::from("member1"), Cell::Int(12)],
        ];
        let t = pretty(&["Member", "TL"], &rows, &["TL"], Some(" Cluster: c "));
        let expected = "+ Cluster: c --+\n|  Member | TL |\n+---------+----+\n| m0      |  1 |\n| member1 | 12 |\n+---------+----+";
        assert_eq!(t, expected);
        assert_eq!(center("TL", 5), "  TL ");
        assert_eq!(center("Tag", 6), " Tag  ");
    }
}
