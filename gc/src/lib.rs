//! cairn gc (filled by a later issue).
