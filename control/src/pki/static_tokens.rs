//! The static bearer tokens of a cluster, in kube-apiserver's `--token-auth-file` format
//! (`token,user,uid,"group1,group2"`) so an operator can read it, and add a line by hand.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kith_api::auth::{User, MASTERS_GROUP, METRICS_GROUP};

use super::files::{read_optional, write_atomic, PRIVATE};
use super::{PkiError, ADMIN_USER, METRICS_USER};

/// One line of the tokens file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StaticToken {
    pub(crate) token: String,
    pub(crate) user: User,
}

/// Leaves the token out: this may end up in a log.
impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("user", &self.user)
            .finish()
    }
}

/// The tokens in `path`, after adding (and persisting) the admin and metrics tokens if
/// the file lacks them.
pub(crate) fn load_or_create(path: &Path) -> Result<Vec<StaticToken>, PkiError> {
    let existing = read_optional(path)?;
    let mut tokens = match &existing {
        Some(text) => parse(text, path)?,
        None => Vec::new(),
    };
    let mut added = Vec::new();
    for (name, group) in [(ADMIN_USER, MASTERS_GROUP), (METRICS_USER, METRICS_GROUP)] {
        if !tokens.iter().any(|t| t.user.name == name) {
            added.push(StaticToken {
                token: random_token(),
                user: User::new(name, [group]),
            });
        }
    }
    if !added.is_empty() {
        // Keep whatever the operator wrote (comments included) and append the new lines.
        let mut text = existing.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for t in &added {
            text.push_str(&render(t));
            text.push('\n');
        }
        write_atomic(path, text.as_bytes(), PRIVATE)?;
        tokens.extend(added);
    }
    Ok(tokens)
}

/// 32 random bytes, base64url without padding: 43 characters, no `,` to upset the CSV.
pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn render(t: &StaticToken) -> String {
    format!(
        "{},{},{},\"{}\"",
        t.token,
        t.user.name,
        t.user.name,
        t.user.groups.join(",")
    )
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<Vec<StaticToken>, PkiError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let corrupt = |why: &str| PkiError::Corrupt {
            path: path.to_path_buf(),
            why: format!("line {}: {why}", n + 1),
        };
        let mut fields = line.splitn(4, ',');
        let token = fields.next().unwrap_or_default().trim();
        let user = fields.next().map(str::trim).unwrap_or_default();
        // The uid (third field) means nothing to kith.
        let _uid = fields.next();
        let groups = fields.next().map(str::trim).unwrap_or_default();
        if token.is_empty() || user.is_empty() {
            return Err(corrupt("expected token,user,uid[,\"groups\"]"));
        }
        let groups = groups
            .strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(groups);
        out.push(StaticToken {
            token: token.to_string(),
            user: User::new(
                user,
                groups.split(',').map(str::trim).filter(|g| !g.is_empty()),
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kube_token_file_lines() {
        let text = "# comment\n\nabc,alice,1001,\"devs,ops\"\ndef,bob,bob\nghi, carol ,c,solo\n";
        let got = parse(text, Path::new("t")).unwrap();
        let users: Vec<(&str, &str, Vec<String>)> = got
            .iter()
            .map(|t| {
                (
                    t.token.as_str(),
                    t.user.name.as_str(),
                    t.user.groups.clone(),
                )
            })
            .collect();
        assert_eq!(
            users,
            vec![
                ("abc", "alice", vec!["devs".to_string(), "ops".to_string()]),
                ("def", "bob", vec![]),
                ("ghi", "carol", vec!["solo".to_string()]),
            ]
        );
        assert!(parse("onlytoken\n", Path::new("t")).is_err());
    }

    #[test]
    fn the_metrics_token_is_readable_without_a_server() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            crate::pki::metrics_token_in(dir.path()),
            Err(PkiError::NotInitialized(_))
        ));
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        let tokens = load_or_create(&dir.path().join("pki/tokens.csv")).unwrap();
        let want = tokens.iter().find(|t| t.user.name == METRICS_USER).unwrap();
        assert_eq!(
            crate::pki::metrics_token_in(dir.path()).unwrap(),
            want.token
        );
        assert!(want.user.in_group(METRICS_GROUP));
    }

    #[test]
    fn render_round_trips() {
        let t = StaticToken {
            token: random_token(),
            user: User::new("kith-admin", ["system:masters", "x"]),
        };
        assert_eq!(parse(&render(&t), Path::new("t")).unwrap(), vec![t.clone()]);
        assert_eq!(t.token.len(), 43);
    }

    #[test]
    fn adds_missing_tokens_and_keeps_operator_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# mine\nsecret1,ci,ci,\"system:masters\"").unwrap();
        let tokens = load_or_create(&path).unwrap();
        assert_eq!(tokens.len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# mine\nsecret1,ci,ci,\"system:masters\"\n"),
            "{text}"
        );
        assert_eq!(load_or_create(&path).unwrap(), tokens);
    }
}
