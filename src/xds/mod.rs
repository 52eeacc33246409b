//! The in-cluster xDS control plane (not built yet).
