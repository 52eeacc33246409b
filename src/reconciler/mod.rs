//! The loops: weight polling, DNS reconcile and acknowledgement.
