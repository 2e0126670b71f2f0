//! driftless's one integration-test binary. Fixtures and helpers live in
//! `support`; each module covers one stage or feature from the user's side.

mod corpus;
mod support;
