//! BackendTrafficPolicy resolution (not built yet).
