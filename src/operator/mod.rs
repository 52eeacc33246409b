//! The TrafficInfra operator's pure core: which child objects a TrafficInfra needs, its status, the
//! effective BackendTrafficPolicy per planner Service, and the admission decision. No I/O here: the
//! reconciler applies what these functions compute.
