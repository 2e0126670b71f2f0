//! Check: everything that can be known without touching live systems.
//! Rendered files become a validated [`crate::model::DesiredState`], or a
//! list of every problem found.

pub mod compose;
pub mod kube;
