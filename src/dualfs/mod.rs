//! Two backends under one mount (issue 6: not implemented yet).
