//! `pgwarden demo`.
