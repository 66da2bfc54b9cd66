//! cairn restore (filled by a later issue).
