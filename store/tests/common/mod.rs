//! What the store's API tests share.

use cairn_store::{BackupStats, NewPoint, SourceInfo};

/// A point of a raw source, of `size` bytes, with no stats or labels.
pub fn raw_point(vm: &str, disk: &str, time: chrono::DateTime<chrono::Utc>, size: u64) -> NewPoint {
    NewPoint {
        vm: vm.into(),
        disk: disk.into(),
        time,
        size,
        source: SourceInfo {
            kind: cairn_store::SourceKind::Raw,
            vhd_uuid: None,
            path: "test".into(),
        },
        parent: None,
        stats: BackupStats::default(),
        run: None,
        labels: Default::default(),
    }
}
