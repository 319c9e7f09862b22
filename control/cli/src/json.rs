//! `-o json`: the agent's reply, indented, with its keys in the order the agent wrote them.
//!
//! Going through `serde_json::Value` would sort every object's keys (the workspace does not
//! enable `preserve_order`, and enabling it would change other crates' output), and would
//! respell numbers. Re-indenting the text keeps the reply as sent.

use serde::de::IgnoredAny;

/// Re-indents the JSON `text` with two spaces, like `serde_json::to_string_pretty`.
/// Fails, with serde_json's message, if `text` is not exactly one JSON value.
pub fn pretty_json(text: &str) -> Result<String, serde_json::Error> {
    // Validate first, so the re-indenter below may assume well-formed input.
    serde_json::from_str::<IgnoredAny>(text)?;
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Copy the string verbatim: braces, commas and escaped quotes inside it are
                // text, not structure.
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
                if chars.next_if_eq(&close).is_some() {
                    // Empty: `{}` / `[]` on one line, as serde_json prints them.
                    out.push(c);
                    out.push(close);
                } else {
                    out.push(c);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_serde_json_pretty_on_sorted_input() {
        let text = r#"{"a":[],"b":{},"c":[1,2.5,-300.5,null,true],"d":{"e":"x","f":[{"g":1}]}}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            pretty_json(text).unwrap(),
            serde_json::to_string_pretty(&value).unwrap()
        );
    }

    #[test]
    fn keeps_key_order_and_number_spelling() {
        let text = "{\"name\": \"web\", \"id\": 1, \"mean\": 1.50}";
        assert_eq!(
            pretty_json(text).unwrap(),
            "{\n  \"name\": \"web\",\n  \"id\": 1,\n  \"mean\": 1.50\n}"
        );
    }

    #[test]
    fn leaves_strings_alone() {
        let text = r#"["a, {b}: [c]", "q\"uote\\", " spaced  out "]"#;
        assert_eq!(
            pretty_json(text).unwrap(),
            "[\n  \"a, {b}: [c]\",\n  \"q\\\"uote\\\\\",\n  \" spaced  out \"\n]"
        );
    }

    #[test]
    fn reindents_already_pretty_input_the_same() {
        let once = pretty_json(r#"{"a":[1,{"b":[]}],"c":{ }}"#).unwrap();
        assert_eq!(pretty_json(&once).unwrap(), once);
        assert_eq!(pretty_json("  42 \n").unwrap(), "42");
    }

    #[test]
    fn rejects_what_is_not_one_json_value() {
        for bad in ["", "{", "[1,]", "try /ready or /status\n", "{} {}"] {
            assert!(pretty_json(bad).is_err(), "{bad:?}");
        }
    }
}
