//! A point read and stored, not yet published.

use chrono::Utc;

use super::NewPoint;
use crate::point::{POINT_FORMAT, PointId, RecoveryPoint};

/// A point read and stored, not yet published: see [`Session::commit_run`].
#[derive(Debug, Clone)]
pub struct StagedPoint(pub(super) RecoveryPoint);

impl StagedPoint {
    /// A point built elsewhere from `point` and its tree's `root` (a client of a remote
    /// store): a new id; its commit time is set when it is published.
    #[must_use]
    pub fn new(point: NewPoint, root: &crate::tree::TreeRoot, chunk_size: u32) -> Self {
        StagedPoint(RecoveryPoint {
            id: PointId::random(),
            vm: point.vm,
            disk: point.disk,
            time: point.time,
            size: point.size,
            chunk_size,
            source: point.source,
            parent: point.parent,
            format: POINT_FORMAT,
            depth: root.depth,
            segments: root.ids.clone(),
            stats: point.stats,
            committed: Utc::now(),
            protected: false,
            protected_until: None,
            run: point.run,
            labels: point.labels,
        })
    }

    /// The point, for sending to the store that publishes it.
    #[must_use]
    pub fn into_point(self) -> RecoveryPoint {
        self.0
    }

    /// The point as it will be published (its commit time is set then).
    #[must_use]
    pub fn point(&self) -> &RecoveryPoint {
        &self.0
    }

    /// Records the bytes the point added to the store (or sent to it).
    pub fn set_new_stored(&mut self, bytes: u64) {
        self.0.stats.new_stored_bytes = bytes;
    }

    /// Records how long reading the point took.
    pub fn set_seconds(&mut self, seconds: f64) {
        self.0.stats.seconds = seconds;
    }
}
