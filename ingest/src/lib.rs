//! cairn ingest (filled by a later issue).
