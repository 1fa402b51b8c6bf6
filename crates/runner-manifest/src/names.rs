//! Spin's naming rules for component ids and variable names.

/// Checks a variable name (application variable, component variable key, or a key a guest
/// asks for) against Spin's rules: lowercase ASCII letters, digits and single underscores,
/// starting with a letter and ending with a letter or digit. Returns Spin's reason on failure,
/// formatted as `"name": reason`.
pub fn validate_variable_name(name: &str) -> Result<(), String> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(format!(
            "invalid character {bad:?}. Variable names may contain only lower-case letters, numbers, and underscores."
        ))
    } else if !name.as_bytes()[0].is_ascii_lowercase() {
        Some("must start with a lowercase ASCII letter".to_owned())
    } else if !name.as_bytes()[name.len() - 1].is_ascii_alphanumeric() {
        Some("must end with a lowercase ASCII letter or digit".to_owned())
    } else if name.contains("__") {
        Some("must not contain multiple consecutive underscores".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(format!("{name:?}: {reason}")),
        None => Ok(()),
    }
}

/// Checks a component id against Spin's kebab-case id rules: words separated by single `-`,
/// each word ASCII alphanumeric and all lowercase or all UPPERCASE, the first word starting
/// with a letter and later words with a letter or digit (`:` is also allowed inside a word).
pub fn validate_component_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty".to_owned());
    }
    if id.contains('_') {
        return Err("words must be separated with '-', not '_'".to_owned());
    }
    for (i, word) in id.split('-').enumerate() {
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            return Err("'-'-separated words must not be empty".to_owned());
        };
        if !(first.is_ascii_alphabetic() || (i > 0 && first.is_ascii_digit())) {
            return Err(format!(
                "'-'-separated words must start with an ASCII letter or digit; got {first:?}"
            ));
        }
        let upper = first.is_ascii_uppercase();
        for ch in chars {
            if ch.is_ascii_digit() || ch == ':' {
                continue;
            }
            if !ch.is_ascii_alphanumeric() {
                return Err(format!(
                    "'-'-separated words may only contain alphanumeric ASCII (plus ':' inside words); got {ch:?}"
                ));
            }
            if ch.is_ascii_uppercase() != upper {
                return Err(format!(
                    "'-'-separated words must be all lowercase or all UPPERCASE; got {word:?}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names() {
        for good in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3", "jwt_secret"] {
            validate_variable_name(good).expect(good);
        }
        for bad in [
            "", "aX", "Upper", "1bc", "_x", "x.y", "x_", "a__b", "x-y", "a:b",
        ] {
            validate_variable_name(bad).expect_err(bad);
        }
        assert_eq!(
            validate_variable_name("DB_URL").unwrap_err(),
            "\"DB_URL\": invalid character 'D'. Variable names may contain only lower-case letters, numbers, and underscores."
        );
    }

    #[test]
    fn component_ids() {
        for good in [
            "a",
            "gateway",
            "login-v2",
            "auth-2fa",
            "my-COMPONENT",
            "a:b",
        ] {
            validate_component_id(good).expect(good);
        }
        for bad in [
            "",
            "snake_case",
            "-a",
            "a-",
            "a--b",
            "1abc",
            "MixedCase",
            "a.b",
            "a b",
        ] {
            validate_component_id(bad).expect_err(bad);
        }
    }
}
