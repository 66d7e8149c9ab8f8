//! The content hash of a rule set: SHA-256 (ring) over each file's name, length and bytes, in name
//! order, hex-encoded. Shown in `/config_dump` and compared to tell a changed rule set.

/// Hash of `(name, bytes)` files; callers pass them sorted by name.
pub fn content_hash<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, bytes) in files {
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::content_hash;

    #[test]
    fn hash_depends_on_names_and_contents() {
        let a = content_hash([("a.yaml", b"x: 1".as_slice())]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, content_hash([("b.yaml", b"x: 1".as_slice())]));
        assert_ne!(a, content_hash([("a.yaml", b"x: 2".as_slice())]));
        // The length prefix keeps a name/content boundary shift from colliding.
        assert_ne!(
            content_hash([("ab", b"c".as_slice())]),
            content_hash([("a", b"bc".as_slice())])
        );
        // Known answer: SHA-256 of nothing.
        assert_eq!(
            content_hash([]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
