//! Secrets and personal data.
