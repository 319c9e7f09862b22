//! Agent names: what a node calls itself on the control channel (`--node-name`). They are
//! label values and log fields on the control plane, so the alphabet is a DNS name's.

/// Longest agent name: a DNS name (a Kubernetes node name).
pub const MAX_AGENT_NAME_LEN: usize = 253;

/// Agent names are label values and log fields: a DNS-name alphabet keeps them printable.
pub fn check_agent_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_AGENT_NAME_LEN {
        return Err(format!(
            "agent name must be 1 to {MAX_AGENT_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!(
            "agent name {name:?} may only hold letters, digits, '-', '.' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_agent_name("node-1.example_a").is_ok());
        for bad in ["", "a b", "x\ny", "é", &"n".repeat(254)] {
            assert!(check_agent_name(bad).is_err(), "{bad:?}");
        }
    }
}
