//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the only form in which
//! `traceparent` and `tracestate` values enter a record or leave in a webhook. A value in any
//! other form, or longer than the standard allows, is dropped rather than carried as sent: a
//! header copied verbatim into every record of a batch would let one request grow the log
//! without bound.

/// `tracestate` as the standard bounds it: at most 32 members, each at most 256 bytes of key
/// and value; a whole value of at most 512 bytes is what every vendor must propagate.
pub const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The `traceparent` to carry for `value`: `version-traceid-parentid-flags` in lower-case
/// hex, neither id all zeros, version `ff` refused. A later version's extra fields are cut
/// off, as the standard tells a version-00 reader to do.
pub fn traceparent(value: &[u8]) -> Option<&[u8]> {
    const LEN: usize = 55;
    let head = value.get(..LEN)?;
    if value.len() > LEN && (value[LEN] != b'-' || &head[..2] == b"00") {
        return None;
    }
    let fields: Vec<&[u8]> = head.split(|&b| b == b'-').collect();
    let [version, trace_id, parent_id, flags] = fields[..] else {
        return None;
    };
    let hex = |field: &[u8], len: usize| {
        field.len() == len && field.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |field: &[u8]| field.iter().any(|&b| b != b'0');
    let valid = hex(version, 2)
        && version != b"ff"
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent_id, 16)
        && nonzero(parent_id)
        && hex(flags, 2);
    valid.then_some(head)
}

/// Whether `value` is a `tracestate` to carry: comma-separated `key=value` members with the
/// standard's characters, at most 32 of them and [`MAX_TRACESTATE_BYTES`] in all.
pub fn tracestate_is_valid(value: &[u8]) -> bool {
    if value.len() > MAX_TRACESTATE_BYTES {
        return false;
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let members: Vec<&str> = text
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    !members.is_empty()
        && members.len() <= MAX_TRACESTATE_MEMBERS
        && members.iter().all(|member| {
            member
                .split_once('=')
                .is_some_and(|(key, value)| tracestate_key(key) && tracestate_value(value))
        })
}

fn tracestate_key(key: &str) -> bool {
    let simple = |part: &str, max: usize| {
        let mut bytes = part.bytes();
        part.len() <= max
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.split_once('@') {
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
        None => simple(key, 256),
    }
}

fn tracestate_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_is_carried_as_is() {
        assert_eq!(traceparent(VALID.as_bytes()), Some(VALID.as_bytes()));
        let later = format!("cc{}-what-comes-later", &VALID[2..]);
        assert_eq!(
            traceparent(later.as_bytes()),
            Some(&later.as_bytes()[..55]),
            "a later version is read as version 00"
        );
    }

    #[test]
    fn anything_else_is_dropped() {
        for refused in [
            String::new(),
            format!("{VALID}-extra"),
            VALID.to_uppercase(),
            format!("ff{}", &VALID[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01".to_owned(),
            "x".repeat(200_000),
        ] {
            assert_eq!(traceparent(refused.as_bytes()), None, "{refused:.80}");
        }
    }

    #[test]
    fn tracestate_follows_the_grammar_and_the_bounds() {
        for valid in [
            "congo=t61rcWkgMzE",
            "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE",
            "tenant@vendor=opaque value",
        ] {
            assert!(tracestate_is_valid(valid.as_bytes()), "{valid}");
        }
        let too_many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        for refused in [
            "",
            "Congo=x",
            "congo",
            "congo=",
            "congo=a,b",
            "congo=\u{7f}",
            &"k=v,".repeat(200),
            &too_many.join(","),
        ] {
            assert!(!tracestate_is_valid(refused.as_bytes()), "{refused:.80}");
        }
    }
}
