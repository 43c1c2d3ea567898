//! One module per task that is more than a deploy mode.

pub mod chat;
pub mod restore;
pub mod status;
