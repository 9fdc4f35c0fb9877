//! The image module's errors and the pod-status reason each one maps to.

use std::path::PathBuf;

/// Why an image could not be made present.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The name does not parse as an image reference.
    #[error("invalid image name {image:?}: {message}")]
    InvalidImageName { image: String, message: String },
    /// Policy `Never` and the image is not stored on this box.
    #[error("container image {image:?} is not present with pull policy of Never")]
    NeverPull { image: String },
    /// The registry refused or failed; `message` is the registry's own words
    /// ("manifest unknown", "unauthorized", ...).
    #[error("failed to pull image {image:?}: {message}")]
    Pull { image: String, message: String },
    /// The image content is unusable: a digest mismatch, a hostile or unsupported layer,
    /// an unreadable config or archive. The message names the offending path or blob.
    #[error("bad image {image:?}: {message}")]
    BadImage { image: String, message: String },
    /// A `.dockerconfigjson` that does not parse.
    #[error("invalid dockerconfigjson: {0}")]
    DockerConfig(String),
    /// The local store failed (disk full, permissions, ...).
    #[error("image store: {context} {path}: {source}", path = path.display())]
    Store {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The `waiting.reason` a container shows for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidImageName { .. } => "InvalidImageName",
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            ImageError::Pull { .. }
            | ImageError::BadImage { .. }
            | ImageError::DockerConfig(_)
            | ImageError::Store { .. } => "ErrImagePull",
        }
    }

    pub(crate) fn store(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Store {
            context,
            path,
            source,
        }
    }

    pub(crate) fn bad(image: &str, message: impl Into<String>) -> ImageError {
        ImageError::BadImage {
            image: image.to_string(),
            message: message.into(),
        }
    }

    /// Sets the image name on errors raised before it was known.
    pub(crate) fn for_image(self, name: &str) -> ImageError {
        match self {
            ImageError::BadImage { image, message } if image.is_empty() => ImageError::BadImage {
                image: name.to_string(),
                message,
            },
            other => other,
        }
    }
}

/// The registry's own message from an oci-client error, the way kubelet shows it.
pub(crate) fn registry_message(error: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match error {
        E::RegistryError { envelope, .. } => {
            let messages: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect();
            messages.join("; ")
        }
        E::UnauthorizedError { url } => format!("unauthorized: authentication required ({url})"),
        E::AuthenticationFailure(message) => format!("unauthorized: {message}"),
        E::ServerError { code, message, .. } => {
            format!("registry answered {code}: {}", message.trim())
        }
        E::ImageManifestNotFoundError(message) => format!("manifest unknown: {message}"),
        // reqwest's Display hides the cause (connection refused, TLS, ...); show the chain.
        E::RequestError(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let cases = [
            (
                ImageError::InvalidImageName {
                    image: "A".into(),
                    message: "x".into(),
                },
                "InvalidImageName",
            ),
            (
                ImageError::NeverPull { image: "a".into() },
                "ErrImageNeverPull",
            ),
            (
                ImageError::Pull {
                    image: "a".into(),
                    message: "manifest unknown".into(),
                },
                "ErrImagePull",
            ),
            (ImageError::bad("a", "device node"), "ErrImagePull"),
        ];
        for (error, want) in cases {
            assert_eq!(error.reason(), want, "{error}");
        }
    }
}
