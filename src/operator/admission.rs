//! Admission of TrafficInfra creates (not built yet).
