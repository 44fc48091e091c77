//! Checks on what the guest returns. Nothing lifted from an instance is
//! trusted: user code can rebind what the guest's driver uses (`json.dumps`,
//! `sys.stdout`, builtins), so every string is capped here, on the host,
//! before it is kept, logged or returned, and a result that claims to be JSON
//! is parsed before it is passed on. Lifting itself copies the whole value
//! first: one value is bounded by the instance's memory limit, not by these
//! caps.

/// Longest exception type name kept, in bytes.
pub(crate) const MAX_TYPE_NAME_BYTES: usize = 256;
/// Longest exception message kept, in bytes (64 KiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Longest traceback kept, in bytes (256 KiB).
pub(crate) const MAX_TRACEBACK_BYTES: usize = 256 << 10;
/// Most names of unpicklable globals reported by a state snapshot.
pub(crate) const MAX_SKIPPED_NAMES: usize = 1_000;

/// `text` cut to at most `limit` bytes (at a character boundary), with a
/// marker saying how many bytes were cut when it was longer.
pub(crate) fn cap(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let dropped = text.len() - floor_char_boundary(&text, limit);
    text.truncate(text.len() - dropped);
    text.push_str(&format!(
        "\n[eryx: truncated, {dropped} more bytes not shown]"
    ));
    text
}

/// The largest index ≤ `index` that is a character boundary of `text`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Whether `text` is one well-formed JSON value.
pub(crate) fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_short_text_and_marks_a_cut_at_a_character_boundary() {
        assert_eq!(cap("short".into(), 10), "short");
        let capped = cap("ééé".into(), 3);
        assert_eq!(capped, "é\n[eryx: truncated, 4 more bytes not shown]");
    }

    #[test]
    fn is_json_refuses_trailing_garbage() {
        assert!(is_json(" {\"a\": [1, 2]} "));
        assert!(!is_json("{\"a\": 1} not json"));
        assert!(!is_json("NaN"));
    }
}
