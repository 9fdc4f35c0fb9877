//! Image reference normalisation (Docker's defaults: `docker.io`, `library/`, `:latest`).

use std::str::FromStr;

use oci_client::Reference;

use super::ImageError;

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
    Reference::from_str(image).map_err(|e| invalid(e.to_string()))
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
