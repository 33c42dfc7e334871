//! stub
pub mod error;
pub mod schema;
pub mod selector;
pub mod ssa;
pub mod store;
pub mod types;
