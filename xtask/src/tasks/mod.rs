//! One module per task that is more than a deploy mode.

pub mod backup;
pub mod chat;
pub mod ci;
pub mod db;
pub mod doctor;
pub mod history;
pub mod ops;
pub mod restore;
pub mod rollback;
pub mod schema;
pub mod status;
