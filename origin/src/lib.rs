//! haul-origin: a local HTTP origin with scriptable faults.
