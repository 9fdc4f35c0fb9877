//! Image reference normalisation (Docker's defaults: `docker.io`, `library/`, `:latest`).
//!
//! The grammar is distribution's (`reference.go`), checked by hand rather than by
//! `oci_spec`'s `Reference::from_str`: that one compiles one large Unicode regex on first
//! use and keeps it for the life of the process, about 7 MiB of the agent's heap (measured
//! with heaptrack on a running agent) to parse a few names per pod. The result is the same
//! `Reference`, built with its plain constructors, and the same normalisation
//! (`oci_spec`'s `split_domain`); a test compares the two parsers. One difference, on
//! purpose: tags are ASCII as in distribution's grammar (`oci_spec`'s `\w` also took
//! other Unicode letters, which no registry accepts in a URL path anyway).
//!
//! ```text
//!  reference      := name [ ":" tag ] [ "@" digest ]
//!  name           := [ domain "/" ] path-component ( "/" path-component )*
//!  domain         := domain-component ( "." domain-component )* [ ":" [0-9]+ ]
//!  domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//!  path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//!  tag            := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//!  digest         := algorithm ":" [0-9a-fA-F]{32,}   (sha256/384/512: 64/96/128 digits)
//!  algorithm      := [A-Za-z][A-Za-z0-9]* ( [-_+.] [A-Za-z][A-Za-z0-9]* )*
//! ```

use oci_client::Reference;
use oci_spec::distribution::ParseError;

use super::ImageError;

/// The longest repository (path after the registry) a reference may name.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Parses `image` with Docker's defaults: no registry → `docker.io`, a single-component
/// Docker Hub name → `library/<name>`, no tag and no digest → `:latest`.
pub(crate) fn parse(image: &str) -> Result<Reference, ImageError> {
    let invalid = |message: String| ImageError::InvalidImageName {
        image: image.to_string(),
        message,
    };
    if image.is_empty() {
        return Err(invalid("empty name".into()));
    }
    if image.trim() != image {
        return Err(invalid("surrounding whitespace".into()));
    }
    parse_reference(image).map_err(|e| invalid(e.to_string()))
}

/// `image` by the grammar above, normalised as `oci_spec` does; its errors are
/// `oci_spec`'s, so the messages on pods stay what they were.
fn parse_reference(image: &str) -> Result<Reference, ParseError> {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A tag follows the last `:` after the last `/`; an earlier `:` is a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if !is_name(name) || !tag.is_none_or(is_tag) || !digest.is_none_or(is_digest) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        let want = match digest.split_once(':') {
            Some(("sha256", _)) => 64,
            Some(("sha384", _)) => 96,
            Some(("sha512", _)) => 128,
            Some(_) => return Err(ParseError::DigestUnsupported),
            None => return Err(ParseError::DigestInvalidFormat),
        };
        if digest.len() - digest.find(':').map_or(0, |i| i + 1) != want {
            return Err(ParseError::DigestInvalidLength);
        }
    }
    let (tag, digest) = (tag.map(str::to_string), digest.map(str::to_string));
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest),
        (tag, None) => Reference::with_tag(
            registry,
            repository,
            tag.unwrap_or_else(|| "latest".to_string()),
        ),
    })
}

/// `[domain "/"] path-component ("/" path-component)*`: the first component may be a
/// domain only when more follow.
fn is_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let rest_ok = rest.iter().all(|c| is_path_component(c));
    rest_ok && (is_path_component(first) || (!rest.is_empty() && is_domain(first)))
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // One or more lower-case alphanumerics...
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // ...then a separator: ".", "_", "__" or any run of "-".
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

fn is_tag(t: &str) -> bool {
    let word = |x: &u8| x.is_ascii_alphanumeric() || *x == b'_';
    let b = t.as_bytes();
    (1..=128).contains(&b.len())
        && word(&b[0])
        && b[1..].iter().all(|x| word(x) || *x == b'.' || *x == b'-')
}

fn is_digest(d: &str) -> bool {
    let Some((algorithm, encoded)) = d.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component)
        && encoded.len() >= 32
        && encoded.bytes().all(|x| x.is_ascii_hexdigit())
}

/// Registry and repository of a valid name, with Docker Hub's defaults (`oci_spec`'s
/// rules: a first component is a registry only if it has a `.` or `:` or is `localhost`).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// The normalised form of `image` (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalise_reference(image: &str) -> Result<String, ImageError> {
    Ok(parse(image)?.whole())
}

/// Whether `image` names a tag of its own (digests don't count).
pub fn has_explicit_tag(image: &str) -> bool {
    explicit_tag(image).is_some()
}

/// The tag written in `image`, if any: after the last `:` of the last path component, so
/// that a registry port (`127.0.0.1:5000/busybox`) is not taken for a tag.
pub(crate) fn explicit_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Whether a registry host is on loopback (plain HTTP allowed there, as Docker does).
pub(crate) fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host
            } else {
                registry
            }
        })
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let cases: &[(&str, Option<&str>)] = &[
            ("busybox", Some("docker.io/library/busybox:latest")),
            ("busybox:1.36", Some("docker.io/library/busybox:1.36")),
            ("library/busybox", Some("docker.io/library/busybox:latest")),
            ("someone/app:v2", Some("docker.io/someone/app:v2")),
            ("docker.io/busybox", Some("docker.io/library/busybox:latest")),
            ("127.0.0.1:5000/busybox", Some("127.0.0.1:5000/busybox:latest")),
            ("localhost/a/b:t", Some("localhost/a/b:t")),
            ("quay.io/org/app:1", Some("quay.io/org/app:1")),
            (
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                Some("docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            ),
            ("", None),
            ("Busybox", None),
            ("busy box", None),
            (" busybox", None),
            ("busybox:bad/tag", None),
            ("busybox:\u{e9}t\u{e9}", None),
            ("busybox@sha256:short", None),
        ];
        for (image, want) in cases {
            let got = normalise_reference(image);
            match want {
                Some(want) => assert_eq!(got.as_deref().ok(), Some(*want), "{image}: {got:?}"),
                None => {
                    let err = got.expect_err(image);
                    assert_eq!(err.reason(), "InvalidImageName", "{image}");
                }
            }
        }
    }

    /// The hand-written parser against `oci_spec`'s regex on names that probe every rule:
    /// same reference, or same error.
    #[test]
    fn same_as_oci_spec() {
        use std::str::FromStr;
        let hex64 = "a".repeat(64);
        let mut cases: Vec<String> = "busybox a a/b/c A/b a/B a.b/c a-b/c -a/b a-/b a.-b/c
            localhost localhost/a localhost:5000/a localhost:/a localhost:x/a
            index.docker.io/a index.docker.io/a/b docker.io/a Docker.io/a
            a:1 a:_x a:.x a:-x a:x.y-z_W a::b a: :a /a a/ a//b
            a__b a___b a_b a..b a.b a--b a-b a_-b a._b a. a_
            1.2.3.4:80/x/y:z [::1]:5000/a a@b a@@b
            a:b/c a:1/c h.com:1/c:d h.com:1/c:d:e h_h.com/a ab.c-d.e/f"
            .split_whitespace()
            .map(str::to_string)
            .collect();
        cases.extend(["a b".to_string(), "a\tb".to_string()]);
        cases.push(format!("a:{}", "t".repeat(128)));
        cases.push(format!("a:{}", "t".repeat(129)));
        cases.push(format!("{}/b", "a".repeat(300)));
        cases.push(format!("x.io/{}", "a".repeat(255)));
        cases.push(format!("x.io/{}", "a".repeat(256)));
        cases.push("a".repeat(247));
        cases.push("a".repeat(248));
        for d in [
            format!("sha256:{hex64}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha384:{}", "b".repeat(96)),
            format!("sha512:{}", "c".repeat(128)),
            format!("sha512:{}", "c".repeat(64)),
            format!("md5:{}", "d".repeat(32)),
            format!("sha256+b64.x-y_z:{hex64}"),
            format!("sha256+:{hex64}"),
            format!("1sha:{hex64}"),
            format!("sha256{hex64}"),
            "sha256:abc".to_string(),
        ] {
            cases.push(format!("busybox@{d}"));
            cases.push(format!("r.io:5/a/b:t@{d}"));
        }
        // Every string of up to three characters over an alphabet that hits each rule.
        let alphabet = ['a', 'Z', '0', '.', '_', '-', ':', '/', '@'];
        let mut short = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = short
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            cases.extend(longer.iter().cloned());
            cases.extend(longer.iter().map(|s| format!("h.io/{s}")));
            cases.extend(longer.iter().map(|s| format!("a{s}b")));
            short = longer;
        }
        for case in &cases {
            let ours = parse_reference(case);
            let theirs = Reference::from_str(case);
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.whole(), b.whole(), "{case:?}");
                    assert_eq!(
                        (a.registry(), a.repository(), a.tag(), a.digest()),
                        (b.registry(), b.repository(), b.tag(), b.digest()),
                        "{case:?}"
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{case:?}"),
                _ => panic!("{case:?}: ours {ours:?}, oci_spec {theirs:?}"),
            }
        }
    }

    #[test]
    fn tags() {
        let cases: &[(&str, Option<&str>)] = &[
            ("busybox", None),
            ("busybox:1", Some("1")),
            ("127.0.0.1:5000/busybox", None),
            ("127.0.0.1:5000/busybox:x", Some("x")),
            ("busybox@sha256:abc", None),
            ("busybox:1@sha256:abc", Some("1")),
        ];
        for (image, want) in cases {
            assert_eq!(explicit_tag(image), *want, "{image}");
            assert_eq!(has_explicit_tag(image), want.is_some(), "{image}");
        }
    }

    #[test]
    fn loopback_registries() {
        let cases = [
            ("127.0.0.1:5000", true),
            ("127.3.2.1", true),
            ("localhost:5000", true),
            ("LOCALHOST", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("10.0.0.1:5000", false),
            ("docker.io", false),
            ("localhost.example.com:5000", false),
            ("128.0.0.1:80", false),
        ];
        for (registry, want) in cases {
            assert_eq!(is_loopback_registry(registry), want, "{registry}");
        }
    }
}
