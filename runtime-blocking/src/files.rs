//! The std file effects, shared by every runtime and kept here under their old paths: the
//! executor itself lives in `haul_driver::files`.

pub use haul_driver::files::{execute_path_op, local_failure, sync_parent, FileWorker};
