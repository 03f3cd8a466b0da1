//! A confined host directory (issue 4: in progress).
