//! A unified diff of two texts (what `edit-config` shows before applying), from a longest
//! common subsequence of lines: configuration documents are small.

/// `---`/`+++` header and one hunk per changed region, with three lines of context.
pub fn unified(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.trim_end_matches('\n').split('\n').collect();
    let b: Vec<&str> = after.trim_end_matches('\n').split('\n').collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (' ' | '-' | '+', line, index in a, index in b).
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    if ops.iter().all(|(c, _)| *c == ' ') {
        return String::new();
    }
    let mut out = String::from("--- \n+++ \n");
    let ctx = 3;
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (c, _))| *c != ' ')
        .map(|(k, _)| k)
        .collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(ctx);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * ctx {
            end = changed[k];
            k += 1;
        }
        let end = (end + ctx + 1).min(ops.len());
        let (mut a0, mut b0) = (0, 0);
        for (c, _) in &ops[..start] {
            if *c != '+' {
                a0 += 1;
            }
            if *c != '-' {
                b0 += 1;
            }
        }
        let alen = ops[start..end].iter().filter(|(c, _)| *c != '+').count();
        let blen = ops[start..end].iter().filter(|(c, _)| *c != '-').count();
        let range = |s: usize, l: usize| match l {
            1 => format!("{}", s + 1),
            0 => format!("{s},0"),
            _ => format!("{},{l}", s + 1),
        };
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a0, alen),
            range(b0, blen)
        ));
        for (c, l) in &ops[start..end] {
            out.push_str(&format!("{c}{l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_change() {
        let d = super::unified("a: 1\nb: 2\n", "a: 1\nb: 3\n");
        assert_eq!(d, "--- \n+++ \n@@ -1,2 +1,2 @@\n a: 1\n-b: 2\n+b: 3\n");
        assert_eq!(super::unified("x\n", "x\n"), "");
    }
}
