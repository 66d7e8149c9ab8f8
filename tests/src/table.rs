//! Plain-text tables for the demo and Markdown tables for the benchmark report.

/// Renders rows as an aligned plain-text table with a header rule.
pub fn text(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    out.push('\n');
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// Renders rows as a GitHub Markdown table.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["v1".to_string(), "40".to_string()],
            vec!["v10".to_string(), "5".to_string()],
        ];
        assert_eq!(
            super::text(&["VERSION", "N"], &rows),
            "VERSION  N\n-------  --\nv1       40\nv10      5\n"
        );
        assert_eq!(
            super::markdown(&["a", "b"], &rows),
            "| a | b |\n|---|---|\n| v1 | 40 |\n| v10 | 5 |\n"
        );
    }
}
