//! cairn's chunk store (filled by the core-store issue).
use rocksdb as _;
