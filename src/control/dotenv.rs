//! The subnet file read as flanneld (and every `source`-ing script's dotenv library, godotenv)
//! reads it. Node start-up reads the previous subnet back with it, and `doctor` reads the file
//! the running node wrote.

/// Returns the value of `key` in `text` read as flanneld reads its subnet file (godotenv):
/// blank lines and `#` comments skipped, an optional `export ` before the key, blanks around
/// `=` (or `:`), a value in single quotes (taken as is) or double quotes (`\n`, `\"` and
/// `\\` unescaped) or bare (up to a ` #` comment, trimmed); of two lines naming the key the
/// later wins.
pub fn value(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let Some(split) = line.find(['=', ':']) else {
            continue;
        };
        if line[..split].trim_end() != key {
            continue;
        }
        let raw = line[split + 1..].trim_start();
        found = Some(match raw.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let body = &raw[1..];
                let Some(end) = closing_quote(body, quote) else {
                    continue;
                };
                let inner = &body[..end];
                if quote == '"' {
                    unescape_double(inner)
                } else {
                    inner.to_owned()
                }
            }
            _ => {
                let cut = raw
                    .char_indices()
                    .find(|&(i, c)| c == '#' && i > 0 && raw[..i].ends_with([' ', '\t']))
                    .map_or(raw.len(), |(i, _)| i);
                raw[..cut].trim().to_owned()
            }
        });
    }
    found
}

/// The index in `body` of the quote that closes a value opened by `quote` (a double quote
/// escaped with `\` does not close).
fn closing_quote(body: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            c if c == quote && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// A double-quoted value with its escapes undone: `\n`, `\r`, `\t`, `\"`, `\\`; any other
/// escaped character stands for itself.
fn unescape_double(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subnet_file_is_read_as_flanneld_reads_it() {
        let subnet = Some("10.244.200.1/24".to_owned());
        for text in [
            "FLANNEL_SUBNET=10.244.200.1/24\n",
            "FLANNEL_SUBNET=\"10.244.200.1/24\"\n",
            "FLANNEL_SUBNET='10.244.200.1/24'\n",
            "export FLANNEL_SUBNET=10.244.200.1/24\n",
            "FLANNEL_SUBNET=10.244.200.1/24 # kept from the last run\n",
            "  FLANNEL_SUBNET = 10.244.200.1/24  \n",
            "FLANNEL_SUBNET: 10.244.200.1/24\n",
            "# FLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_NETWORK=10.244.0.0/16\n\nFLANNEL_SUBNET=10.244.200.1/24\n",
            "FLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_SUBNET=10.244.200.1/24\n",
            "FLANNEL_SUBNET=\"10.244.200.1/24\" # a comment\r\n",
        ] {
            assert_eq!(value(text, "FLANNEL_SUBNET"), subnet, "{text:?}");
        }
        for text in [
            "",
            "FLANNEL_SUBNETS=10.244.200.1/24\n",
            "XFLANNEL_SUBNET=10.244.200.1/24\n",
            "FLANNEL_SUBNET=\"10.244.200.1/24\n",
            "exportFLANNEL_SUBNET=10.244.200.1/24\n",
        ] {
            assert_ne!(value(text, "FLANNEL_SUBNET"), subnet, "{text:?}");
        }
        assert_eq!(
            value("A=\"x\\\"y\\\\z\\n\"\n", "A").as_deref(),
            Some("x\"y\\z\n")
        );
        assert_eq!(value("A=x#y\n", "A").as_deref(), Some("x#y"));
    }

    proptest::proptest! {
        /// Any text gives a value or none, never a panic (a subnet file may hold anything).
        #[test]
        fn any_subnet_file_text_is_read(text in "\\PC{0,200}", key in "[A-Z_]{1,8}") {
            let _ = value(&text, &key);
        }
    }
}
