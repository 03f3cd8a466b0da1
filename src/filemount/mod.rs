//! Single-file volumes (issue 7: not implemented yet).
