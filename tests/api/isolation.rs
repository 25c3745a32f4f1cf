//! Tenant isolation.
