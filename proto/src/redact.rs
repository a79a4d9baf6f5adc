//! `Debug` of the messages that carry secrets: the secret fields are shown as `<redacted>` (or
//! as empty), so a request logged with `{:?}` never leaks them.

use std::fmt;

use crate::v1::PullImageRequest;

impl fmt::Debug for PullImageRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("PullImageRequest")
            .field("reference", &self.reference)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_in_debug() {
        let request = PullImageRequest {
            reference: "ghcr.io/a/b:1".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        let text = format!("{request:?} {request:#?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("ghcr.io/a/b:1"),
            "{text}"
        );
    }
}
