//! bkv client SDK: validates the fleet key (pinned), opens Noise sessions with
//! the vault through the frontend, registers and recovers the backup key with
//! OPAQUE, and writes and reads encrypted backups in storage.

pub mod archive;
pub mod backup;
pub mod error;
pub mod keys;
pub mod ota;
pub mod protectors;
pub mod session;
pub mod storage;
pub mod vault;

pub use error::{ClientError, Result};
pub use keys::BackupKey;
pub use session::{Endpoint, Session};
pub use storage::BackupStore;
pub use vault::VaultClient;
