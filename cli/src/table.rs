//! Plain-text tables in kubectl's style: upper-case headers, columns separated by three spaces,
//! every column padded to its widest cell (the last one is not padded).

/// Renders `header` and `rows`; rows shorter than the header are padded with empty cells.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().take(cols).enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            l.push_str(cell);
            if i + 1 < cols {
                let pad = width[i] - cell.chars().count() + 3;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        let cells: Vec<&str> = (0..cols)
            .map(|i| r.get(i).map(String::as_str).unwrap_or(""))
            .collect();
        line(cells);
    }
    out
}

/// The first 12 characters of a hash (`-` for none), as shown in tables.
pub fn short_hash(h: &str) -> String {
    if h.is_empty() {
        "-".to_string()
    } else {
        h.chars().take(12).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let t = render(
            &["NAME", "STATUS"],
            &[
                vec!["a".into(), "SYNCED".into()],
                vec!["longer-name".into(), "STALE".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          STATUS\na             SYNCED\nlonger-name   STALE\n"
        );
    }

    #[test]
    fn short_rows_and_unicode_widths() {
        let t = render(&["A", "B", "C"], &[vec!["é".into()]]);
        assert_eq!(t, "A   B   C\né\n");
        assert_eq!(short_hash(""), "-");
        assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
    }
}
